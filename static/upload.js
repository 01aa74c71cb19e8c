// Drag-and-drop and a preview for the upload form; the form also works without this script.
(function () {
  const input = document.getElementById("image");
  const zone = document.getElementById("drop-zone");
  const preview = document.getElementById("preview");
  const text = document.getElementById("drop-text");
  if (!input || !zone) return;

  function show(file) {
    if (!file || !file.type.startsWith("image/")) { preview.hidden = true; return; }
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    text.textContent = file.name;
  }
  input.addEventListener("change", () => show(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.remove("over");
  }));
  zone.addEventListener("drop", (e) => {
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(input.files[0]); }
  });
})();
