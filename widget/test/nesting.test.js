import assert from "node:assert/strict";
import { test } from "node:test";

import { lineDepth, MARKDOWN_LIMITS, markdownNesting, plainTextReason } from "../src/nesting.js";

test("each blockquote and list marker of a line is a level, and so is its indentation", () => {
  assert.equal(lineDepth("hello"), 0);
  assert.equal(lineDepth("> quote"), 1);
  assert.equal(lineDepth(">>> x"), 3);
  assert.equal(lineDepth("> > > x"), 4); // 3 quotes and 2 columns between them
  assert.equal(lineDepth("- item"), 1);
  assert.equal(lineDepth("  - sub item"), 2);
  assert.equal(lineDepth("    1. deeper"), 3);
  assert.equal(lineDepth("> - * + 1) x"), 7); // 5 markers and 5 columns between them
  assert.equal(lineDepth("\t- x"), 3);
  assert.equal(lineDepth("-"), 1);
  assert.equal(lineDepth("-x"), 0); // not a list marker
  assert.equal(lineDepth("**bold**"), 0);
  assert.equal(lineDepth("2024. was a year"), 1);
  assert.equal(lineDepth("12345678901. x"), 0); // too long to be a list number
  // Indentation alone (code) is no nesting.
  assert.equal(lineDepth(`${" ".repeat(80)}{"key": 1}`), 0);
});

test("nesting counts the deepest line, the deepest brackets and emphasis marks", () => {
  assert.deepEqual(markdownNesting("plain text"), { depth: 0, brackets: 0, delimiters: 0 });
  assert.deepEqual(markdownNesting("> a\n>> b\r\n- c"), { depth: 2, brackets: 0, delimiters: 0 });
  assert.deepEqual(markdownNesting("[a [b [c]]] ]]] [d]"), { depth: 0, brackets: 3, delimiters: 0 });
  assert.deepEqual(markdownNesting("*a* __b__ ~c~"), { depth: 0, brackets: 0, delimiters: 8 });
});

test("ordinary messages are rendered as Markdown", () => {
  for (const text of [
    "hello **world**",
    "> a quote\n> > a reply to it\n\n- one\n  - two\n    - three",
    "[a link](https://example.org) and `code_with_underscores`",
    "```python\n" + `${" ".repeat(60)}return {"deeply": "indented"}\n` + "```",
    "x".repeat(MARKDOWN_LIMITS.chars),
  ]) {
    assert.equal(plainTextReason(text), null, text);
  }
});

test("deep, bracketed, emphatic or long messages are shown as plain text", () => {
  const cases = [
    [">".repeat(5000), /nested 5000 levels/],
    ["> ".repeat(5000), /nested/],
    [Array.from({ length: 100 }, (_, i) => `${" ".repeat(2 * i)}- x`).join("\n"), /nested/],
    [Array.from({ length: 30 }, (_, i) => `${" ".repeat(3 * i)}1. x`).join("\n"), /nested/],
    ["- ".repeat(5000), /nested/],
    ["> - ".repeat(3000), /nested/],
    [`text\n\n${">".repeat(21)} deep`, /nested 21 levels deep \(more than 20\)/],
    ["[".repeat(5000), /brackets nested 5000 deep/],
    [`${"[".repeat(25)}a${"](b)".repeat(25)}`, /brackets/],
    ["_a".repeat(8000), /emphasis marks/],
    ["*".repeat(MARKDOWN_LIMITS.delimiters + 1), /emphasis marks/],
    ["x".repeat(MARKDOWN_LIMITS.chars + 1), /longer than 20000 characters/],
  ];
  for (const [text, reason] of cases) assert.match(plainTextReason(text) || "", reason, text.slice(0, 40));
});

test("measuring a huge message is quick", () => {
  const start = performance.now();
  for (const text of [">".repeat(1_000_000), "[".repeat(1_000_000), "- \n".repeat(300_000)]) {
    markdownNesting(text);
  }
  assert.ok(performance.now() - start < 2000);
});
