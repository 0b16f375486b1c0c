import assert from "node:assert/strict";
import { test } from "node:test";

import { exportFileName, exportMarkdown, mdText, when } from "../src/exporting.js";

const ANN = { username: "ann", display_name: "Ann *A*" };
const BOB = { username: "bob", name: "bob" };

test("timestamps are UTC to the second", () => {
  assert.equal(when(0), "1970-01-01 00:00:00 UTC");
  assert.equal(when(1796306729.9), "2026-12-03 14:05:29 UTC");
  assert.equal(when(undefined), "?");
});

test("names and rooms are escaped and on one line", () => {
  assert.equal(mdText("a *b*\n# c"), "a \\*b\\* \\# c");
});

test("a conversation: deleted, edited, reactions, replies and mentions", () => {
  const messages = [
    { seq: 1, ts: 0, user: ANN, body: "Hello $x^2$ `code`", replies: 1, reactions: { "👍": ["bob", "ann"] } },
    { seq: 2, ts: 60, user: BOB, body: "", deleted: true, edited: 70, reactions: {} },
    { seq: 3, ts: 120, user: BOB, body: "hi @ann", reply_to: 1, edited: 130, mentions: ["ann"] },
  ];
  const text = exportMarkdown("lab #1", messages, 3600);
  const lines = text.split("\n");
  assert.equal(lines[0], "# lab \\#1");
  assert.equal(lines[2], "Exported from jupyter-chat-ext on 1970-01-01 01:00:00 UTC: 3 messages.");
  assert.ok(text.includes("**Ann \\*A\\*** (@ann) · 1970-01-01 00:00:00 UTC · #1\n\nHello $x^2$ `code`\n"));
  assert.ok(text.includes("*1 reply · 👍 2 (bob, ann)*"));
  assert.ok(text.includes("**bob** (@bob) · 1970-01-01 00:01:00 UTC · #2\n\n*(deleted)*\n"));
  assert.ok(!text.includes("edited 1970-01-01 00:01:10"), "a deleted message is not said edited");
  assert.ok(text.includes("↪ reply to #1\n\nhi @ann\n\n*edited 1970-01-01 00:02:10 UTC · mentions @ann*"));
  assert.ok(text.endsWith("\n"));
  assert.equal(text.split("\n---\n").length, 4);
});

test("an empty room still exports, and a message without a user does not break it", () => {
  assert.ok(exportMarkdown("r", [], 0).includes(": 0 messages."));
  assert.ok(exportMarkdown("r", [{ seq: 1, ts: 0, body: "x" }], 0).includes("(@?)"));
});

test("the file name keeps only safe characters", () => {
  assert.equal(exportFileName("lab"), "lab.md");
  assert.equal(exportFileName("../a b/ç"), "a_b_ç.md");
  assert.equal(exportFileName("..."), "room.md");
});

test("the same text as the server's export (jupyter_chat_ext/export.py) for the same messages", () => {
  const messages = [
    { seq: 1, ts: 0, user: ANN, body: "Hello", replies: 1, reactions: { "👍": ["bob", "ann"] } },
    { seq: 3, ts: 120, user: BOB, body: "hi @ann", reply_to: 1, edited: 130, mentions: ["ann"] },
    { seq: 4, ts: 1, user: { username: "bob" }, body: "", deleted: true },
  ];
  // Produced by export.markdown("lab #1", messages, None, 3600).
  const expected = "# lab \\#1\n\nExported from jupyter-chat-ext on 1970-01-01 01:00:00 UTC: 3 messages.\n\n---\n\n**Ann \\*A\\*** (@ann) · 1970-01-01 00:00:00 UTC · #1\n\nHello\n\n*1 reply · 👍 2 (bob, ann)*\n\n---\n\n**bob** (@bob) · 1970-01-01 00:02:00 UTC · #3\n\n↪ reply to #1\n\nhi @ann\n\n*edited 1970-01-01 00:02:10 UTC · mentions @ann*\n\n---\n\n**bob** (@bob) · 1970-01-01 00:00:01 UTC · #4\n\n*(deleted)*\n";
  assert.equal(exportMarkdown("lab #1", messages, 3600), expected);
});

test("an attachment is a line linked to the server's copy, its name shown as text", () => {
  const message = {
    seq: 3, ts: 1, user: { username: "a" }, body: "caption",
    attachment: { name: "plot](javascript:x) <b>.png", mime: "image/png", size: 2048, url: "chat-ext/attachments/ab?room=r" },
  };
  const text = exportMarkdown("r", [message], 0, () => "http://host/base/chat-ext/attachments/ab?room=r");
  assert.match(text, /📎 \[plot\\\]\(javascript:x\) \\<b\\>\.png\]\(<http:\/\/host\/base\/chat-ext\/attachments\/ab\?room=r>\) \(image\/png, 2\.0 KiB\)/);
  const unlinked = exportMarkdown("r", [message], 0, () => "javascript:alert(1)");
  assert.doesNotMatch(unlinked, /javascript:alert/);
  const deleted = exportMarkdown("r", [{ ...message, deleted: true }], 0, () => "http://x/");
  assert.doesNotMatch(deleted, /📎/);
});
