// MathJax settings for the \( \) and \[ \] formulas that pymdownx.arithmatex leaves in the pages;
// without MathJax (offline) the formulas stay readable as TeX source.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]] },
  options: { processHtmlClass: "arithmatex" },
};
