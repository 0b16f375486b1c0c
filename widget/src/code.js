// Code blocks in messages (and the code of an attachment's provenance): highlighted with
// highlight.js (its core and a few languages, bundled), with a copy button.
//
// highlight.js returns HTML (the code escaped, tokens in <span class="hljs-...">); that
// HTML is sanitized like a message before it is used (only <span> with a class may stay),
// so the highlighter never puts anything else into the page whatever the code holds.
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import diff from "highlight.js/lib/languages/diff";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import julia from "highlight.js/lib/languages/julia";
import latex from "highlight.js/lib/languages/latex";
import markdown from "highlight.js/lib/languages/markdown";
import plaintext from "highlight.js/lib/languages/plaintext";
import python from "highlight.js/lib/languages/python";
import r from "highlight.js/lib/languages/r";
import shell from "highlight.js/lib/languages/shell";
import sql from "highlight.js/lib/languages/sql";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { h } from "./dom.js";

const LANGUAGES = { bash, diff, javascript, json, julia, latex, markdown, plaintext, python, r, shell, sql, xml, yaml };
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);

/** Past this many characters a block is not highlighted (the copy button stays). */
export const HIGHLIGHT_LIMIT = 20_000;
// A block with no language is highlighted only when a language is clearly recognised.
const AUTO_LIMIT = 5_000;
const AUTO_RELEVANCE = 3;

const purify = DOMPurify(window);

/** The language a fence's info string names, if it is one we highlight (aliases too). */
export function languageOf(info) {
  const name = String(info || "").trim().split(/\s+/)[0].toLowerCase();
  return name && hljs.getLanguage(name) ? name : null;
}

/** Highlight the text of `code` (a <code> element) in place; returns the language used, or null. */
export function highlight(code, info) {
  const text = code.textContent;
  if (text.length > HIGHLIGHT_LIMIT) return null;
  let result;
  try {
    const language = languageOf(info);
    if (language) {
      result = hljs.highlight(text, { language, ignoreIllegals: true });
    } else if (text.length <= AUTO_LIMIT) {
      result = hljs.highlightAuto(text);
      if (result.relevance < AUTO_RELEVANCE) return null;
    } else {
      return null;
    }
  } catch (err) {
    return null;
  }
  const fragment = purify.sanitize(result.value, { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"], RETURN_DOM_FRAGMENT: true });
  // The sanitized tokens must still spell the code exactly, or the original text stays.
  if (fragment.textContent !== text) return null;
  code.replaceChildren(fragment);
  code.classList.add("hljs");
  if (result.language) code.dataset.language = result.language;
  return result.language || null;
}

/** Put `text` on the clipboard; the button says whether it worked. */
export async function copyText(text, button) {
  const said = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (err) {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = said), 1500);
}

/** A copy button that puts `text()` on the clipboard. */
export function copyButton(text, label = "Copy", title = "Copy to the clipboard") {
  const button = h("button", { type: "button", class: "jce-copy", text: label, title });
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    copyText(text(), button);
  });
  return button;
}

/** A highlighted block of `text` in `language` (an info string), with a copy button. */
export function codeBlock(text, language) {
  const code = h("code", { text });
  const pre = h("pre", {}, code);
  highlight(code, language);
  return h("div", { class: "jce-code" }, pre, copyButton(() => text));
}

/**
 * Highlight every `pre > code` under `root` (their language from `data-lang`, as the
 * Markdown renderer writes it) and give each block a copy button.
 */
export function decorateCode(root) {
  for (const pre of [...root.querySelectorAll("pre")]) {
    const code = pre.querySelector("code");
    if (!code) continue;
    const text = code.textContent;
    highlight(code, code.getAttribute("data-lang"));
    code.removeAttribute("data-lang");
    const wrapper = h("div", { class: "jce-code" });
    pre.replaceWith(wrapper);
    wrapper.append(pre, copyButton(() => text));
  }
}
