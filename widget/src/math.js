// Math in message bodies: `$...$` inline and `$$...$$` displayed, rendered with KaTeX.
//
// The Markdown parser finds the math (a marked extension, so math inside code spans and
// code blocks is never seen: those are taken first) and leaves a placeholder element
// that names it; once the Markdown is sanitized, each placeholder is replaced by the DOM
// KaTeX builds. Why DOM and not HTML: `katex.render` builds its nodes with
// createElement/setAttribute (it never parses a string as HTML), from what its own
// parser accepted, with `trust: false` (no \href, \url, \includegraphics, \html*), and
// bounded sizes and macro expansion. What it built is then checked anyway (no link, no
// event handler, no URL anywhere): a later KaTeX that let one through would be caught.
import katex from "katex";

/** What a message's math may cost; past them the source is shown as it is. */
export const MATH_LIMITS = Object.freeze({
  expressions: 100, // per message
  chars: 2000, // per expression
  maxSize: 20, // em: the largest box (\rule, \kern) an expression may ask for
  maxExpand: 200, // macro expansions per expression
});

const KATEX_OPTIONS = Object.freeze({
  trust: false,
  throwOnError: false,
  strict: "ignore",
  maxSize: MATH_LIMITS.maxSize,
  maxExpand: MATH_LIMITS.maxExpand,
  output: "htmlAndMathml",
});

// `$$...$$` (may span lines) and `$...$` the way Pandoc reads them: the opening `$` is
// not followed by a space, the closing one not preceded by a space nor followed by a
// digit, so "it costs $5 and $10" stays text.
const DISPLAY = /^\$\$([^$]+?)\$\$/;
const INLINE = /^\$(?!\s)((?:\\.|[^\\$\n])+?)(?<!\s)\$(?!\d)/;
const BLOCK = /^ {0,3}\$\$((?:[^$]|\$(?!\$))+?)\$\$ *(?:\n+|$)/;

/**
 * A marked extension that turns math into placeholders: `<span data-math="KEY:N">`,
 * where N indexes `state.found` (the sources, filled while parsing) and KEY is
 * `state.key`, the current render's own, so nothing else can pass for a placeholder.
 * The caller resets `state` before each parse.
 */
export function mathExtension(state) {
  const placeholder = (source, display) => {
    const found = state.found;
    if (found.length >= MATH_LIMITS.expressions || source.length > MATH_LIMITS.chars) return null;
    found.push({ source, display });
    return `<span data-math="${state.key}:${found.length - 1}"></span>`;
  };
  const escapeHtml = (text) => text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
  const token = (type, match, display) => ({ type, raw: match[0], source: match[1].trim(), display });
  const renderer = (tok) => placeholder(tok.source, tok.display) ?? escapeHtml(tok.raw);
  return {
    extensions: [
      {
        name: "mathBlock",
        level: "block",
        start: (src) => src.match(/^ {0,3}\$\$/m)?.index,
        tokenizer(src) {
          const match = BLOCK.exec(src);
          return match && match[1].trim() ? token("mathBlock", match, true) : undefined;
        },
        renderer: (tok) => `<p>${renderer(tok)}</p>`,
      },
      {
        name: "math",
        level: "inline",
        start: (src) => src.indexOf("$") >= 0 ? src.indexOf("$") : undefined,
        tokenizer(src) {
          const match = DISPLAY.exec(src);
          if (match && match[1].trim()) return token("math", match, true);
          const inline = INLINE.exec(src);
          return inline ? token("math", inline, false) : undefined;
        },
        renderer,
      },
    ],
  };
}

// What KaTeX's output may hold: its classes, styles and ARIA, MathML's and SVG's own
// attributes; never a link, an event handler or a URL.
const FORBIDDEN_TAGS = new Set(["A", "SCRIPT", "STYLE", "IFRAME", "OBJECT", "EMBED", "IMG", "IMAGE", "USE", "FOREIGNOBJECT", "LINK", "META", "FORM"]);
const FORBIDDEN_ATTRIBUTE = /^(?:on|href$|xlink:href$|src$|action$|formaction$|srcdoc$)/i;

/** Remove from a built tree anything that could run, load or link (see above). */
export function scrubMath(root) {
  for (const node of [...root.querySelectorAll("*")]) {
    if (FORBIDDEN_TAGS.has(node.tagName.toUpperCase())) {
      node.replaceWith(...(node.tagName.toUpperCase() === "A" ? node.childNodes : []));
      continue;
    }
    for (const attribute of [...node.attributes]) {
      const value = attribute.value.toLowerCase();
      if (FORBIDDEN_ATTRIBUTE.test(attribute.name) || value.includes("url(") || value.includes("javascript:")) {
        node.removeAttribute(attribute.name);
      }
    }
  }
  return root;
}

/** The source shown as it was typed, saying why it is not rendered. */
function sourceNode(source, display, reason) {
  const node = document.createElement("code");
  node.className = "jce-math-source";
  node.textContent = display ? `$$${source}$$` : `$${source}$`;
  node.title = reason;
  return node;
}

/** A math expression as a DOM node (KaTeX's), or its source if KaTeX fails. Never throws. */
export function mathNode(source, display) {
  const holder = document.createElement(display ? "div" : "span");
  holder.className = display ? "jce-math jce-math-display" : "jce-math";
  try {
    katex.render(source, holder, { ...KATEX_OPTIONS, displayMode: display });
  } catch (err) {
    return sourceNode(source, display, `Shown as typed: ${err && err.message}`);
  }
  const error = holder.querySelector(".katex-error");
  if (error) return sourceNode(source, display, error.getAttribute("title") || "KaTeX could not read it");
  return scrubMath(holder);
}

/** Replace the placeholders of render `key` in `root` by their math; drop any other. */
export function fillMath(root, found, key) {
  for (const node of [...root.querySelectorAll("[data-math]")]) {
    const [owner, index] = node.getAttribute("data-math").split(":");
    const math = owner === key ? found[Number(index)] : undefined;
    if (math) node.replaceWith(mathNode(math.source, math.display));
    else node.removeAttribute("data-math");
  }
}
