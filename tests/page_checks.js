// Checks run in the page by tests/test_browser_reading.py, on the computed styles and boxes.
({
  // Contrast (WCAG 2.x relative luminance) of every visible piece of text against what lies behind
  // it, and of every control's outline against what surrounds it.
  contrastFailures: () => {
    const parse = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const over = (top, below) => { const a = top[3]; return [0, 1, 2].map(i => top[i] * a + below[i] * (1 - a)).concat(1); };
  const background = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let colour = parse(getComputedStyle(document.documentElement).backgroundColor);
    if (colour[3] < 1) colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const luminance = (c) => { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const ratio = (a, b) => { const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const visible = (e) => { const s = getComputedStyle(e); const r = e.getBoundingClientRect(); return r.width > 1 && r.height > 1 && s.visibility === "visible" && s.opacity !== "0"; };
  const failures = [];
  for (const e of document.querySelectorAll("body *")) {
    if (!visible(e) || e.closest("[hidden], .visually-hidden, .skip-link, button:disabled")) continue;
    const s = getComputedStyle(e);
    const ownText = Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    if (ownText) {
      const size = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
      const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
      const bg = background(e);
      const r = ratio(over(parse(s.color), bg), bg);
      if (r < needed) failures.push(`text "${e.textContent.trim().slice(0, 30)}" (${e.className || e.tagName}) ${r.toFixed(2)}:1 < ${needed}`);
    }
    if (e.matches("input:not([type=checkbox]):not([type=hidden]):not([type=file]), select, .dropzone, button:not(.link):not(.primary)")) {
      const bg = background(e.parentElement);
      const r = ratio(over(parse(s.borderTopColor), bg), bg);
      if (r < 3) failures.push(`outline of ${e.tagName}.${e.className} ${r.toFixed(2)}:1 < 3`);
    }
  }
  return failures;
},

  // Every visible control that is not a link inside a sentence, shorter than `least` pixels.
  smallTargets: (least) => Array.from(document.querySelectorAll(
    "button, .button, input:not([type=hidden]):not([type=checkbox]), select, summary, label.checkbox, .topbar a, .pager a, .tile-link, .similar-link"))
  .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && !e.closest(".skip-link"); })
  .map(e => [e.textContent.trim().slice(0, 30) || e.className || e.tagName, e.getBoundingClientRect().height])
  .filter(([, height]) => height < least - 0.5),

  // Where a result card's name is covered or cut: by the box of a badge (or of the score or the
  // "Similar" link) overlapping it, by any other element drawn over one of its lines of text, or
  // by its own box clipping it. The badge, score and link must not overlap each other either.
  namesHidden: () => {
    const failures = [];
    const cross = (a, b) => Math.max(0, Math.min(a.right, b.right) - Math.max(a.left, b.left))
      * Math.max(0, Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top));
    document.querySelectorAll("[data-result-grid] [data-tile]").forEach((tile, i) => {
      tile.scrollIntoView({ block: "center" });  // elementFromPoint sees the viewport only
      const name = tile.querySelector(".name");
      const box = name.getBoundingClientRect();
      if (box.width < 8 || box.height < 8 || getComputedStyle(name).visibility !== "visible") failures.push(`result ${i + 1}: no name to see`);
      if (name.scrollWidth > name.clientWidth + 1 || name.scrollHeight > name.clientHeight + 1) failures.push(`result ${i + 1}: its name is clipped`);
      const parts = [name, ...tile.querySelectorAll(".score, .badge, .similar-link")];
      parts.forEach((part, j) => parts.slice(j + 1).forEach((other) => {
        const area = cross(part.getBoundingClientRect(), other.getBoundingClientRect());
        if (area > 0) failures.push(`result ${i + 1}: "${part.textContent.trim()}" and "${other.textContent.trim()}" overlap by ${area.toFixed(0)} px²`);
      }));
      const range = document.createRange();
      range.selectNodeContents(name);
      for (const line of range.getClientRects()) {
        const x = line.left + line.width / 2, y = line.top + line.height / 2;
        const top = document.elementFromPoint(x, y);
        if (top && top !== name && !name.contains(top)) failures.push(`result ${i + 1}: ${top.className || top.tagName} is drawn over its name`);
      }
    });
    return failures;
  },

  // Why the focus outline of `e` does not show whole: none, or an ancestor that clips it.
  outlineClipped: (e) => {
    const s = getComputedStyle(e), r = e.getBoundingClientRect();
    const reach = parseFloat(s.outlineWidth) + parseFloat(s.outlineOffset);
    if (s.outlineStyle === "none" || parseFloat(s.outlineWidth) < 2) return "no outline";
    for (let a = e.parentElement; a; a = a.parentElement) {
      if (getComputedStyle(a).overflow === "visible") continue;
      const c = a.getBoundingClientRect();
      if (r.left - reach < c.left || r.right + reach > c.right || r.top - reach < c.top || r.bottom + reach > c.bottom)
        return "clipped by " + a.className;
    }
    return "";
  },
})
