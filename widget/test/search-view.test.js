import assert from "node:assert/strict";
import { resolveObjectURL } from "node:buffer";
import { afterEach, beforeEach, mock, test } from "node:test";

import { FakeSocket, installPage } from "./page.js";

// Search and export in the chat window (jsdom): the real view on the real connection,
// whose socket the test plays as the server.
const window = installPage();
const { ChatConnection } = await import("../src/connection.js");
const { ChatView } = await import("../src/view.js");

const ALICE = { username: "alice", display_name: "Alice" };
const BOB = { username: "bob", display_name: "Bob" };
const HOSTILE = '<img src=x onerror="globalThis.__xss=1"> data';

const message = (room, seq, user, body, fields = {}) => ({ op: "message", room, seq, id: `${room}${seq}`, ts: 1000 + seq, user, body, ...fields });

let conn;
let view;
let ws;
let el;

function open(history, seq = history.length ? history.at(-1).seq : 0) {
  FakeSocket.opened = [];
  conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
  conn.open();
  ws = FakeSocket.opened.at(-1);
  ws.receive({ op: "hello", user: BOB, limits: { max_message_size: 1000, history_page_size: 50 } });
  el = document.createElement("div");
  document.body.append(el);
  view = new ChatView(el, conn, { room: "general" });
  ws.receive({ op: "joined", room: "general", epoch: "e", seq, recovered: false, history, members: [ALICE, BOB], values: {}, read: seq });
}

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout"] });
  globalThis.__xss = undefined;
});

afterEach(() => {
  view.destroy();
  conn.close();
  el.remove();
  mock.timers.reset();
});

const click = (node) => node.dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
const key = (node, name, options = {}) => node.dispatchEvent(new window.KeyboardEvent("keydown", { key: name, bubbles: true, cancelable: true, ...options }));

function search(query) {
  view.searchInput.value = query;
  key(view.searchInput, "Enter");
  return ws.framesOf("search").at(-1);
}

test("Enter searches every room; results newest first, matches as <mark>, bodies as text", () => {
  open([message("general", 1, ALICE, "hello")]);
  const frame = search("data");
  assert.deepEqual({ ...frame, id: undefined }, { op: "search", id: undefined, query: "data", rooms: null, limit: 50 });
  assert.equal(view.searchPanel.hidden, false);
  ws.receive({
    op: "search",
    id: frame.id,
    results: [
      { ...message("lab", 7, ALICE, HOSTILE), ts: 2000, marks: [[41, 45], [99, 120], [0, 0]] },
      { ...message("general", 1, BOB, "old data"), ts: 1500, marks: [[4, 8]] },
    ],
  });
  const items = [...view.searchList.querySelectorAll(".jce-result")];
  assert.deepEqual(items.map((b) => [b.dataset.room, b.dataset.seq]), [["lab", "7"], ["general", "1"]]);
  assert.equal(items[0].querySelector(".jce-result-room").textContent, "#lab");
  assert.equal(items[0].querySelector(".jce-result-author").textContent, "Alice");
  assert.equal(items[0].querySelector(".jce-result-text").textContent, HOSTILE);
  assert.deepEqual([...items[0].querySelectorAll("mark")].map((m) => m.textContent), ["data"]);
  assert.equal(view.searchList.querySelector("img"), null, "no markup from a body");
  assert.equal(globalThis.__xss, undefined);
  // An answer to an earlier search (not the one awaited) changes nothing.
  ws.receive({ op: "search", id: "other", results: [] });
  assert.equal(view.searchList.querySelectorAll(".jce-result").length, 2);
});

test("a result in another room joins it, and the message is shown and flashed", () => {
  open([message("general", 1, ALICE, "hello")]);
  const frame = search("plot");
  ws.receive({ op: "search", id: frame.id, results: [{ ...message("lab", 3, ALICE, "plot it"), marks: [[0, 4]] }] });
  click(view.searchList.querySelector(".jce-result"));
  assert.equal(view.searchPanel.hidden, true);
  assert.equal(ws.framesOf("join").at(-1).room, "lab");
  assert.equal(view.active.name, "lab");
  ws.receive({ op: "joined", room: "lab", epoch: "e2", seq: 4, recovered: false, history: [1, 2, 3, 4].map((s) => message("lab", s, ALICE, `m${s}`)), members: [ALICE, BOB], values: {}, read: 4 });
  const node = view.list.querySelector('li[data-seq="3"]');
  assert.ok(node.classList.contains("jce-flash"));
});

test("a refused search is said like other errors and closes the results", () => {
  open([]);
  const frame = search("data");
  ws.receive({ op: "error", id: frame.id, code: "invalid_field", message: "The query has no word." });
  assert.equal(view.errorLine.textContent, "The query has no word.");
  assert.equal(view.searchPanel.hidden, true);
  // A query with no word is not sent at all.
  const before = ws.framesOf("search").length;
  view.searchInput.value = "?!";
  key(view.searchInput, "Enter");
  assert.equal(ws.framesOf("search").length, before);
  assert.match(view.errorLine.textContent, /Search for some words/);
});

test("export loads every earlier page, then downloads the room as Markdown", () => {
  open([message("general", 3, ALICE, "third", { reply_to: 1 }), message("general", 4, BOB, "fourth")], 4);
  const downloads = [];
  view.root.addEventListener("click", (event) => {
    const link = event.target.closest("a[download]");
    if (!link) return;
    event.preventDefault();
    downloads.push({ name: link.download, href: link.href });
  });
  click(view.exportButton);
  const history = ws.framesOf("history").at(-1);
  assert.equal(history.before, 3);
  assert.equal(downloads.length, 0, "not before the history is all there");
  ws.receive({ op: "history", room: "general", id: history.id, messages: [message("general", 1, ALICE, "first"), message("general", 2, ALICE, "", { deleted: true })] });
  assert.equal(downloads.length, 1);
  assert.equal(downloads[0].name, "general.md");
  return resolveObjectURL(downloads[0].href)
    .text()
    .then((text) => {
      assert.ok(text.startsWith("# general\n"));
      for (const part of ["\nfirst\n", "*(deleted)*", "↪ reply to #1\n\nthird", "\nfourth\n"]) assert.ok(text.includes(part), part);
    });
});

test("a result far back opens an island (one request); export fills the hole before downloading", async () => {
  const run = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => message("general", from + i, ALICE, `m${from + i}`));
  open(run(101, 110));
  const frame = search("m20");
  ws.receive({ op: "search", id: frame.id, results: [{ ...message("general", 20, ALICE, "m20"), marks: [[0, 3]] }] });
  click(view.searchList.querySelector(".jce-result"));
  const [around] = ws.framesOf("history");
  assert.deepEqual([around.around, around.limit], [20, 50]);
  ws.receive({ op: "history", room: "general", id: around.id, messages: run(1, 50) });
  assert.ok(view.list.querySelector('li[data-seq="20"]').classList.contains("jce-flash"));
  assert.equal(view.list.querySelector('li[data-seq="101"]'), null, "the island, not the newest");
  const downloads = [];
  view.root.addEventListener("click", (event) => {
    const link = event.target.closest("a[download]");
    if (!link) return;
    event.preventDefault();
    downloads.push(link.href);
  });
  click(view.exportButton);
  const fill = ws.framesOf("history").at(-1);
  assert.deepEqual([fill.before, fill.around], [101, undefined], "the hole, from its newer end");
  assert.equal(downloads.length, 0);
  ws.receive({ op: "history", room: "general", id: fill.id, messages: run(51, 100) });
  assert.equal(ws.framesOf("history").length, 2);
  assert.equal(downloads.length, 1);
  const text = await resolveObjectURL(downloads[0]).text();
  assert.match(text, /110 messages\./);
});
