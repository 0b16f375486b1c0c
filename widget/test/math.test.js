import assert from "node:assert/strict";
import { test } from "node:test";

import { installPage } from "./page.js";

// Math (KaTeX) and highlighted code in message bodies, in a page (jsdom).
const window = installPage();
const { renderMarkdown } = await import("../src/markdown.js");
const { MATH_LIMITS, scrubMath } = await import("../src/math.js");

function render(body) {
  const root = window.document.createElement("div");
  root.append(renderMarkdown(body));
  return root;
}

/** Nothing under `root` can run, load or link: no script-capable tag, handler or URL. */
function assertInert(root, what) {
  for (const node of root.querySelectorAll("*")) {
    const tag = node.tagName.toLowerCase();
    assert.ok(!["script", "iframe", "object", "embed", "img", "image", "use", "foreignobject", "style", "a"].includes(tag), `${what} left a <${tag}>`);
    for (const attribute of node.attributes) {
      assert.ok(!/^on/i.test(attribute.name), `${what} left ${attribute.name}`);
      assert.ok(!/href|src|action/i.test(attribute.name), `${what} left ${attribute.name}`);
      // (a title holds text only: the source of an expression shown as typed, say)
      if (attribute.name !== "title") assert.ok(!/javascript:|url\(/i.test(attribute.value), `${what} left ${attribute.name}=${attribute.value}`);
    }
  }
}

test("inline and displayed math render with KaTeX; prices stay text", () => {
  const root = render("energy $E = mc^2$ and\n\n$$\\int_0^1 x\\,dx = \\frac{1}{2}$$\n\nit costs $5 and $10");
  const maths = root.querySelectorAll(".jce-math");
  assert.equal(maths.length, 2);
  assert.ok(maths[0].querySelector(".katex"));
  assert.ok(!maths[0].classList.contains("jce-math-display"));
  assert.ok(maths[1].classList.contains("jce-math-display"));
  assert.ok(maths[1].querySelector(".katex-display"));
  // MathML for screen readers, with the source as its annotation
  assert.equal(maths[0].querySelector("annotation").textContent, "E = mc^2");
  assert.match(root.textContent, /it costs \$5 and \$10/);
  assertInert(root, "math");
});

test("math inside code spans and code blocks is left alone", () => {
  const root = render("`$x^2$` and\n\n```\ny = $a + b$\n```");
  assert.equal(root.querySelector(".katex"), null);
  assert.equal(root.querySelector("p code").textContent, "$x^2$");
  assert.equal(root.querySelector("pre code").textContent, "y = $a + b$");
});

test("an expression KaTeX cannot read is shown as its source", () => {
  const root = render("broken $\\frac{1}{$ here");
  const source = root.querySelector(".jce-math-source");
  assert.ok(source);
  assert.equal(source.textContent, "$\\frac{1}{$");
  assert.match(source.title, /KaTeX|parse/i);
  assert.equal(root.querySelector(".katex"), null);
});

test("no link, script or URL comes out of math (trust: false, and scrubbed)", () => {
  const payloads = [
    "$\\href{javascript:alert(1)}{x}$",
    "$$\\url{javascript:alert(1)}$$",
    "$\\includegraphics{https://evil.example/p.png}$",
    "$\\htmlStyle{background:url(https://evil.example/x)}{x}$",
    "$\\htmlData{onclick=alert(1)}{x}$",
    "$\\htmlId{x}{y}$ $\\htmlClass{jce-root}{y}$",
    "$\\color{red;background:url(javascript:alert(1))}{x}$",
    "$\\def\\a{\\a\\a}\\a$", // expansion without end: bounded by maxExpand
    "$\\rule{100000em}{100000em}$", // bounded by maxSize
    "$<img src=x onerror=alert(1)>$",
    "$\\text{<script>alert(1)</script>}$",
  ];
  for (const payload of payloads) {
    const root = render(payload);
    assertInert(root, payload);
    assert.equal(root.querySelector("a, script, img"), null, payload);
  }
  const huge = render("$\\rule{100000em}{100000em}$");
  for (const node of huge.querySelectorAll("[style]")) assert.ok(!/1000\d\dem/.test(node.getAttribute("style")));
});

test("scrubMath removes what a KaTeX bug could let through", () => {
  const root = window.document.createElement("span");
  root.innerHTML = '<span onclick="x()" style="color:red"><a href="javascript:x()">t</a><img src="x"></span>';
  scrubMath(root);
  assert.equal(root.querySelector("a, img"), null);
  assert.equal(root.querySelector("[onclick]"), null);
  assert.equal(root.textContent, "t");
});

test("a placeholder typed in a message is text, not math", () => {
  const root = render('<span data-math="0:0"></span> $x$');
  assert.match(root.textContent, /<span data-math="0:0"><\/span>/);
  assert.equal(root.querySelector("[data-math]"), null);
  assert.equal(root.querySelectorAll(".katex").length, 1);
});

test("past the number of expressions a message may hold, the rest stay source", () => {
  const body = Array.from({ length: MATH_LIMITS.expressions + 5 }, (_, i) => `$x_{${i}}$`).join(" ");
  const root = render(body);
  assert.equal(root.querySelectorAll(".jce-math").length, MATH_LIMITS.expressions);
  assert.match(root.textContent, /\$x_\{104\}\$/);
});

test("code blocks are highlighted, with a copy button, and stay text", () => {
  const root = render("```python\nimport numpy as np\n# <img src=x onerror=alert(1)>\ndef f(x):\n    return 'a' + x\n```");
  const code = root.querySelector(".jce-code pre code");
  assert.ok(code.classList.contains("hljs"));
  assert.equal(code.dataset.language, "python");
  assert.ok([...code.querySelectorAll(".hljs-keyword")].some((n) => n.textContent === "import"));
  assert.ok(code.querySelector(".hljs-comment"));
  assert.ok(code.querySelector(".hljs-string"));
  assert.equal(code.textContent, "import numpy as np\n# <img src=x onerror=alert(1)>\ndef f(x):\n    return 'a' + x");
  assert.equal(root.querySelector("img"), null);
  for (const span of code.querySelectorAll("*")) {
    assert.equal(span.tagName, "SPAN");
    assert.deepEqual([...span.attributes].map((a) => a.name), ["class"]);
  }
  assert.equal(root.querySelector(".jce-code .jce-copy").textContent, "Copy");
});

test("the copy button puts the block's code on the clipboard", async () => {
  let copied = null;
  Object.defineProperty(globalThis, "navigator", { value: { clipboard: { writeText: async (t) => (copied = t) } }, configurable: true });
  const root = render("```sql\nSELECT 1;\n```");
  root.querySelector(".jce-copy").dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(copied, "SELECT 1;");
  assert.equal(root.querySelector(".jce-copy").textContent, "Copied");
});

test("a block in an unknown language is left plain, and one without a language is guessed only when clear", () => {
  const unknown = render("```brainfuck\n+[-->-[>>+>-----<<]<--<---]>-.\n```");
  assert.equal(unknown.querySelector("pre code span"), null);
  const guessed = render("```\nimport os\nfor name in os.listdir('.'):\n    print(name)\n```");
  assert.ok(guessed.querySelector("pre code .hljs-keyword"));
});
