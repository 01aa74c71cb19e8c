// Draws the probability bar and the threshold mark (set here because the CSP forbids inline styles) and shows them,
// and shows the print button, which needs this script (the browser's own Print works without it). Without the
// script the bar stays hidden: drawn without its width, it was full for every result.
document.querySelectorAll(".scale").forEach((scale) => {
  const pct = (v) => Math.max(0, Math.min(100, parseFloat(v) * 100)) + "%";
  scale.querySelector(".bar").style.width = pct(scale.dataset.probability);
  scale.querySelector(".mark").style.left = pct(scale.dataset.threshold);
  scale.hidden = false;
});
const printButton = document.getElementById("print-result");
if (printButton) {
  printButton.hidden = false;
  printButton.addEventListener("click", () => window.print());
}
