// The upload form's drop zone: drag and drop, a preview, and the zone as the one file control (the native input
// is kept for the keyboard and screen readers, but not drawn). The form also works without this script.
(function () {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("image");
  const zone = document.getElementById("drop-zone");
  const preview = document.getElementById("preview");
  const text = document.getElementById("drop-text");
  const message = document.getElementById("upload-message");
  if (!form || !input || !zone) return;

  form.classList.add("enhanced");
  // The browser's own "please select a file" bubble would point at the undrawn input; say it in the page instead.
  form.noValidate = true;

  function say(sentence) {
    message.textContent = sentence;
    message.hidden = !sentence;
  }
  // What the server would refuse anyway, said before the upload is sent: a file over the size limit, and an iPhone's
  // HEIC photo. Anything else, a text file too, goes to the server, which says what is wrong with it.
  const maxBytes = Number(form.dataset.maxBytes);
  let refusal = "";
  function check(file) {
    if (maxBytes && file.size > maxBytes) {
      return `${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${Math.floor(maxBytes / 2 ** 20)} MB. ` +
        "Export a smaller JPEG.";
    }
    if (/^image\/hei[cf]/.test(file.type)) {  // other types are the server's to judge (browsers name some oddly)
      return `${file.name} is a HEIC photo, which this page does not read (${form.dataset.accepted}). ` +
        "Export it as JPEG first.";
    }
    return "";
  }
  function show(file) {
    refusal = file ? check(file) : "";
    say(refusal);
    if (!file) return;
    text.textContent = file.name;
    if (refusal || !file.type.startsWith("image/")) { preview.hidden = true; return; }
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  }
  input.addEventListener("change", () => show(input.files[0]));
  // Back from a result or an error page, the browser may restore the chosen file into the input: show it, or the
  // zone would invite a drop while Analyse would send that file.
  const submit = document.getElementById("submit");
  const label = submit.textContent;
  window.addEventListener("pageshow", () => {
    submit.disabled = false;  // a page kept whole in the back-forward cache comes back as it was left: busy
    submit.textContent = label;
    if (input.files.length) show(input.files[0]);
  });
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.remove("over");
  }));
  zone.addEventListener("drop", (e) => {
    const files = e.dataTransfer.files;
    if (!files.length) return;
    const first = new DataTransfer();  // this page judges one image; the API takes up to 16
    first.items.add(files[0]);
    input.files = first.files;
    show(files[0]);
    if (files.length > 1 && !refusal) say(`${files.length} files were dropped; only the first, ${files[0].name}, will be analysed.`);
  });
  form.addEventListener("submit", (e) => {
    if (!input.files.length || refusal) {
      e.preventDefault();
      say(refusal || "Choose an image first: drop it on the box above or click the box.");
      input.focus();
      return;
    }
    // the upload and the analysis take a moment: say so, and keep a second click from sending the image twice
    submit.disabled = true;
    submit.textContent = "Analysing…";
  });
})();
