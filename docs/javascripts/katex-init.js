// Render the formulas that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \], with
// the KaTeX copy vendored beside this file (docs/javascripts/katex/), so the site renders offline.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    throwOnError: false,
  });
});
