// Renders the \( \) and \[ \] formulas that pymdownx.arithmatex leaves in the pages, when
// MathJax is available; without it (offline) the formulas stay readable as TeX source.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]] },
  options: { processHtmlClass: "arithmatex" },
};
