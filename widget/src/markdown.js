// Message bodies are Markdown. Raw HTML in them is shown as text; the rendered HTML is
// then sanitized anyway: no script, no event handlers, no images or frames, and links
// only to http(s) and mailto, opened in a new tab without access to this page.
// A chat message never runs code here; one too deep or too long to parse safely is shown
// as plain text (see nesting.js). Math (`$...$`, `$$...$$`) is rendered by KaTeX into
// the sanitized result (math.js) and code blocks are highlighted, with a copy button
// (code.js); math inside code is left as it is.
import DOMPurify from "dompurify";
import { Marked } from "marked";
import { decorateCode } from "./code.js";
import { fillMath, mathExtension } from "./math.js";
import { plainTextReason } from "./nesting.js";

const marked = new Marked({ gfm: true, breaks: true, async: false });

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

// HTML typed into a message is shown as the text it is, never interpreted; and an
// image is shown as its link, never loaded (no tracking pixels, no onerror).
marked.use({
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      return escapeHtml(`![${text}](${href})`);
    },
    // The language goes in `data-lang`, read (and removed) when the block is highlighted.
    code({ text, lang }) {
      const language = String(lang || "").trim().split(/\s+/)[0];
      return `<pre><code data-lang="${escapeHtml(language)}">${escapeHtml(text)}</code></pre>\n`;
    },
  },
});

// The math of the render under way: its sources and its placeholders' key (math.js).
const math = { found: [], key: "" };
marked.use(mathExtension(math));

function newKey() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const purify = DOMPurify(window);
const ALLOWED_TAGS = [
  "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote",
  "ul", "ol", "li", "a", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
  "table", "thead", "tbody", "tr", "th", "td", "span",
];
const SAFE_URL = /^(?:https?:|mailto:)/i;

purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!SAFE_URL.test(href.trim())) {
      node.removeAttribute("href");
    } else {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  }
});

/** A message shown as the text it is, saying why it was not rendered as Markdown. */
function plainText(text, reason) {
  const fragment = document.createDocumentFragment();
  const node = document.createElement("p");
  node.className = "jce-plain";
  node.title = `Shown as plain text: ${reason}`;
  node.textContent = text;
  fragment.append(node);
  return fragment;
}

/**
 * Sanitize HTML to a DocumentFragment that holds only the tags and attributes a chat
 * message may use, with links to http(s) and mailto only (and in a new tab).
 */
export function sanitizeHtml(html) {
  return purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR: ["href", "title", "align", "data-lang", "data-math"],
    ALLOW_DATA_ATTR: false,
    ADD_URI_SAFE_ATTR: ["data-lang", "data-math"], // not URLs: never checked as such
    ALLOWED_URI_REGEXP: SAFE_URL,
    RETURN_DOM_FRAGMENT: true,
  });
}

/**
 * Render a message body to a DocumentFragment of sanitized HTML. A body too deep, too
 * long or too costly to parse (see nesting.js), or one the parser fails on, is shown as
 * plain text instead. Never throws.
 */
export function renderMarkdown(body) {
  const text = String(body);
  let reason = plainTextReason(text);
  if (!reason) {
    try {
      math.found = [];
      math.key = newKey();
      const fragment = sanitizeHtml(marked.parse(text));
      fillMath(fragment, math.found, math.key);
      decorateCode(fragment);
      return fragment;
    } catch (err) {
      reason = "it could not be read as Markdown";
    }
  }
  return plainText(text, reason);
}
