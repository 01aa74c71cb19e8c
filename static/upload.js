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
  const submit = document.getElementById("submit");
  const label = submit.textContent;
  const maxBytes = Number(form.dataset.maxBytes);
  let refusal = "";
  // the limit is the whole request's: the form adds its token and the part's headers to the file
  const FORM_BYTES = 4096;
  function check(file) {
    if (maxBytes && file.size + FORM_BYTES > maxBytes) {  // its size rounded up: 20.0 MB read as within 20 MB
      return `${file.name} is ${(Math.ceil(file.size / 2 ** 20 * 10) / 10).toFixed(1)} MB, over the upload limit of ` +
        `${form.dataset.maxSize}. Export a smaller JPEG.`;
    }
    // HEIC by its type or by its name: Chromium gives an iPhone's IMG_0001.HEIC no type at all
    if (/^image\/hei[cf]/.test(file.type) || /\.hei[cf]$/i.test(file.name)) {
      return `${file.name} is a HEIC photo, which this page does not read (${form.dataset.accepted}). ` +
        "Export it as JPEG first.";
    }
    return "";
  }
  const invitation = text.textContent;
  function show(file) {
    refusal = file ? check(file) : "";
    say(refusal);
    submit.disabled = false;  // a new choice after an upload stopped in the browser (Esc) may be sent
    submit.textContent = label;
    if (!file) {  // the choice cleared (a cancelled file chooser, in some browsers): the zone as it was
      text.textContent = invitation;
      preview.hidden = true;
      return;
    }
    text.textContent = file.name;
    if (refusal || !file.type.startsWith("image/")) { preview.hidden = true; return; }
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  }
  // a picture the browser cannot draw (TIFF, in Chromium) is analysed all the same: no broken preview for it
  preview.addEventListener("error", () => { preview.hidden = true; });
  input.addEventListener("change", () => show(input.files[0]));
  // Back from a result or an error page, the browser may restore the chosen file into the input: show it, or the
  // zone would invite a drop while Analyse would send that file.
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
  // Esc stops the page's upload in the browser, which sends the page no event: ready again for another try
  window.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && submit.disabled) { submit.disabled = false; submit.textContent = label; }
  });
})();
