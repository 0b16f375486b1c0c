import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { FakeSocket, installPage } from "./page.js";

// The chat window in a page (jsdom): the real view on the real connection, whose socket
// is played by the test as the server. What jsdom lacks (layout) is stubbed to nothing.
const window = installPage();
const { ChatConnection } = await import("../src/connection.js");
const { ChatView } = await import("../src/view.js");

const ALICE = { username: "alice", name: "alice", display_name: "Alice" };
const BOB = { username: "bob", name: "bob", display_name: "Bob" };
const HOSTILE = '<img src=x onerror="globalThis.__xss=1">';

const message = (seq, user, body, fields = {}) => ({ op: "message", room: "general", seq, id: `m${seq}`, ts: 1000 + seq, user, body, ...fields });
const change = (seq, kind, now, { id = `c${seq}`, user = BOB, emoji } = {}) => ({
  op: "change",
  room: "general",
  seq,
  id,
  ts: 2000 + seq,
  user,
  kind,
  target: now.seq,
  emoji,
  message: { ...now, rev: seq },
});

let conn;
let view;
let ws;
let el;

/** Alice's window on "general", holding `history`; `hello` adds fields to the hello frame. */
async function open(history, hello = {}) {
  FakeSocket.opened = [];
  conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
  await conn.open();
  ws = FakeSocket.opened.at(-1);
  ws.receive({ op: "hello", user: ALICE, limits: { max_message_size: 100, history_page_size: 50 }, ...hello });
  el = document.createElement("div");
  document.body.append(el);
  view = new ChatView(el, conn, { room: "general" });
  const seq = history.length ? history.at(-1).seq : 0;
  ws.receive({ op: "joined", room: "general", epoch: "e", seq, recovered: false, history, members: [ALICE, BOB], values: {} });
}

beforeEach(() => {
  globalThis.__xss = undefined;
});

afterEach(() => {
  view.destroy();
  conn.close();
  el.remove();
});

const item = (seq, root = view.list) => root.querySelector(`li[data-seq="${seq}"]`);
const click = (node) => node.dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
const key = (node, name, options = {}) => {
  const event = new window.KeyboardEvent("keydown", { key: name, bubbles: true, cancelable: true, ...options });
  node.dispatchEvent(event);
  return event;
};
const typeInto = (node, text) => {
  node.value = text;
  node.dispatchEvent(new window.Event("input", { bubbles: true }));
};
// (jsdom's selectors miss emoji in attribute values: compare them in JavaScript)
const withEmoji = (seq, selector, emoji) => [...item(seq).querySelectorAll(selector)].find((b) => b.dataset.emoji === emoji) || null;
const action = (seq, name, root = view.list) => item(seq, root).querySelector(`[data-action="${name}"]`);

test("reply: the composer says to what, the reply quotes its parent, the parent counts it and opens its thread", async () => {
  await open([message(1, BOB, "what do we ship?"), message(2, ALICE, "not sure")]);
  click(action(1, "reply"));
  assert.equal(view.replyBar.hidden, false);
  assert.match(view.replyBar.textContent, /Replying to Bob: what do we ship\?/);
  key(view.composer, "Escape");
  assert.equal(view.replyBar.hidden, true, "Esc cancels the reply");
  click(action(1, "reply"));
  typeInto(view.composer, "the widget");
  key(view.composer, "Enter");
  const [sent] = ws.framesOf("send");
  assert.deepEqual([sent.body, sent.reply_to], ["the widget", 1]);
  assert.equal(view.replyBar.hidden, true, "a reply is one message");
  assert.match(view.pendingList.querySelector(".jce-quote").textContent, /Bob/);
  ws.receive(message(3, ALICE, "the widget", { id: sent.id, reply_to: 1, parent_replies: 1 }));
  assert.match(item(3).querySelector(".jce-quote").textContent, /Bob.*what do we ship\?/);
  assert.equal(action(1, "thread").textContent, "1 reply");
  click(action(1, "thread"));
  assert.equal(view.threadPanel.hidden, false);
  assert.deepEqual([...view.threadList.children].map((li) => li.dataset.seq), ["1", "3"]);
  assert.match(view.replyBar.textContent, /Replying in the thread of Bob/);
  // a reply made in the thread shows in it, and the parent's count follows
  ws.receive(message(4, BOB, "agreed", { reply_to: 1, parent_replies: 2 }));
  assert.deepEqual([...view.threadList.children].map((li) => li.dataset.seq), ["1", "3", "4"]);
  assert.equal(action(1, "thread").textContent, "2 replies");
  typeInto(view.composer, "in the thread");
  key(view.composer, "Enter");
  assert.equal(ws.framesOf("send")[1].reply_to, 1, "in a thread, the next message replies in it too");
  click(view.threadClose);
  assert.equal(view.threadPanel.hidden, true);
  assert.equal(view.replyBar.hidden, true);
});

test("reactions: the picker reacts, a count toggles your own, names show on hover", async () => {
  await open([message(1, BOB, "ship it", { reactions: { "👍": ["bob"] } })]);
  const chip = () => withEmoji(1, ".jce-reaction", "👍");
  assert.equal(chip().textContent, "👍1");
  assert.equal(chip().title, "Bob reacted with 👍");
  click(action(1, "react"));
  const picks = item(1).querySelectorAll(".jce-picker .jce-pick");
  assert.deepEqual([...picks].map((b) => b.textContent), ["👍", "❤️", "😄", "🎉", "👀", "🚀", "✅", "❌"]);
  click(withEmoji(1, ".jce-pick", "🎉"));
  assert.equal(item(1).querySelector(".jce-picker"), null, "the picker closes after a pick");
  const [react] = ws.framesOf("react");
  assert.deepEqual([react.seq, react.emoji], [1, "🎉"]);
  const party = () => withEmoji(1, ".jce-reaction", "🎉");
  assert.ok(party().classList.contains("jce-saving"), "shown at once, marked as on its way");
  ws.receive(change(2, "react", message(1, BOB, "ship it", { reactions: { "👍": ["bob"], "🎉": ["alice"] } }), { id: react.id, user: ALICE, emoji: "🎉" }));
  assert.ok(!party().classList.contains("jce-saving"));
  assert.equal(party().getAttribute("aria-pressed"), "true");
  click(chip()); // someone else's reaction: adds ours
  click(party()); // ours: takes it back
  assert.deepEqual(ws.sent.slice(-2).map((f) => [f.op, f.emoji]), [["react", "👍"], ["unreact", "🎉"]]);
  assert.equal(chip().textContent, "👍2");
  assert.equal(party(), null);
  assert.equal(chip().title, "Bob, Alice reacted with 👍");
});

test("edit: Up arrow in an empty composer edits your last message; Enter saves, Esc cancels", async () => {
  await open([message(1, ALICE, "helo"), message(2, BOB, "hi")]);
  const up = key(view.composer, "ArrowUp");
  assert.ok(up.defaultPrevented);
  const input = item(1).querySelector(".jce-edit-input");
  assert.equal(input.value, "helo");
  assert.equal(document.activeElement, input);
  key(input, "Escape");
  assert.equal(item(1).querySelector(".jce-edit-input"), null);
  assert.equal(item(1).querySelector(".jce-body").textContent.trim(), "helo");
  click(action(1, "edit"));
  const again = item(1).querySelector(".jce-edit-input");
  typeInto(again, "hello");
  // a change that comes meanwhile (bob reacts) keeps the editor and what was typed
  ws.receive(change(3, "react", message(1, ALICE, "helo", { reactions: { "👀": ["bob"] } }), { emoji: "👀" }));
  assert.equal(item(1).querySelector(".jce-edit-input").value, "hello");
  key(item(1).querySelector(".jce-edit-input"), "Enter");
  const [edit] = ws.framesOf("edit");
  assert.deepEqual([edit.seq, edit.body], [1, "hello"]);
  assert.equal(item(1).querySelector(".jce-body").textContent.trim(), "hello");
  assert.match(item(1).querySelector(".jce-foot").textContent, /saving…/);
  ws.receive(change(4, "edit", message(1, ALICE, "hello", { edited: 2004, reactions: { "👀": ["bob"] } }), { id: edit.id, user: ALICE }));
  assert.match(item(1).querySelector(".jce-edited").textContent, /^edited$/);
  // not someone else's: no edit or delete action on bob's message
  assert.equal(action(2, "edit"), null);
  assert.equal(action(2, "delete"), null);
  // a text typed in the composer: Up arrow moves in it, edits nothing
  typeInto(view.composer, "draft");
  assert.ok(!key(view.composer, "ArrowUp").defaultPrevented);
});

test("delete: asked in the window first; a deleted message shows no body, to its author and to others", async () => {
  await open([message(1, ALICE, "oops, a secret"), message(2, BOB, "quoting it", { reply_to: 1 })]);
  click(action(1, "delete"));
  assert.match(item(1).querySelector(".jce-confirm").textContent, /Delete this message for everyone\?/);
  assert.equal(ws.framesOf("delete").length, 0);
  click(item(1).querySelector('[data-action="cancel-delete"]'));
  assert.equal(item(1).querySelector(".jce-confirm"), null);
  click(action(1, "delete"));
  assert.equal(document.activeElement, item(1).querySelector(".jce-confirm-cancel"), "the safe choice has the focus");
  // a change arriving meanwhile keeps the confirmation, and never takes the focus from the composer
  view.composer.focus();
  ws.receive(change(3, "react", message(1, ALICE, "oops, a secret", { reactions: { "👀": ["bob"] } }), { emoji: "👀" }));
  assert.ok(item(1).querySelector(".jce-confirm"));
  assert.equal(document.activeElement, view.composer);
  click(item(1).querySelector('[data-action="confirm-delete"]'));
  const [deletion] = ws.framesOf("delete");
  assert.equal(deletion.seq, 1);
  ws.receive(change(4, "delete", message(1, ALICE, "", { deleted: true }), { id: deletion.id, user: ALICE }));
  assert.equal(item(1).querySelector(".jce-body").textContent, "message deleted");
  assert.equal(item(1).querySelector(".jce-actions"), null);
  assert.ok(!view.root.textContent.includes("secret"), "the body is nowhere, not even in a quote");
  assert.match(item(2).querySelector(".jce-quote").textContent, /message deleted/);
});

test("a moderator (hello.moderator) may delete anyone's message, after the same confirmation; never edit it", async () => {
  await open([message(1, BOB, "spam, spam, spam"), message(2, ALICE, "mine")], { moderator: true });
  assert.equal(conn.moderator, true);
  assert.ok(action(1, "delete"), "delete shows on bob's message");
  assert.equal(action(1, "edit"), null, "edit never shows on someone else's message");
  assert.ok(action(2, "edit") && action(2, "delete"), "own messages keep both");
  click(action(1, "delete"));
  assert.match(item(1).querySelector(".jce-confirm").textContent, /Delete this message for everyone\?/);
  assert.equal(ws.framesOf("delete").length, 0, "nothing is sent before the confirmation");
  click(item(1).querySelector('[data-action="confirm-delete"]'));
  const [deletion] = ws.framesOf("delete");
  assert.deepEqual([deletion.room, deletion.seq], ["general", 1]);
  assert.ok(item(1).classList.contains("jce-deleting"));
  ws.receive(change(3, "delete", message(1, BOB, "", { deleted: true }), { id: deletion.id, user: ALICE }));
  assert.equal(item(1).querySelector(".jce-body").textContent, "message deleted");
  assert.ok(!view.root.textContent.includes("spam"));
});

test("without hello.moderator (false or absent), someone else's message has no delete", async () => {
  for (const hello of [{ moderator: false }, {}]) {
    await open([message(1, BOB, "hi")], hello);
    assert.equal(conn.moderator, false);
    assert.equal(action(1, "delete"), null);
    assert.equal(action(1, "edit"), null);
    assert.ok(action(1, "reply"), "the message's actions are drawn");
    view.destroy();
    conn.close();
    el.remove();
  }
  await open([message(1, BOB, "hi")], { moderator: "yes" });
  assert.equal(action(1, "delete"), null, "only moderator: true counts");
});

test("emoji and names from others are text, never HTML; refusals are said in the window", async () => {
  const evil = { username: "mallory", display_name: HOSTILE };
  await open([message(1, evil, "hi", { reactions: { [HOSTILE]: ["mallory", HOSTILE] } }), message(2, BOB, "re", { reply_to: 1 })]);
  assert.equal(view.root.querySelectorAll("img, script").length, 0);
  const chip = item(1).querySelector(".jce-reaction");
  assert.equal(chip.querySelector(".jce-reaction-emoji").textContent, HOSTILE);
  assert.ok(chip.title.includes(HOSTILE));
  assert.match(item(2).querySelector(".jce-quote-author").textContent, /<img/);
  assert.equal(globalThis.__xss, undefined);
  click(action(2, "react"));
  click(withEmoji(2, ".jce-pick", "👍"));
  const [react] = ws.framesOf("react");
  ws.receive({ op: "error", room: "general", id: react.id, code: "too_many_reactions", message: "x" });
  assert.match(view.errorLine.textContent, /as many different reactions/);
  assert.equal(item(2).querySelector(".jce-reaction"), null, "the refused reaction is gone");
  ws.receive({ op: "error", room: "general", id: conn.edit("general", 2, "mine now"), code: "forbidden", message: "x" });
  assert.equal(view.errorLine.textContent, "Only its author can edit a message.");
  ws.receive({ op: "error", room: "general", id: conn.deleteMessage("general", 9), code: "not_found", message: "x" });
  assert.equal(view.errorLine.textContent, "That message is not in this room's history.");
});

/** Messages `from`..`to` by Bob (as a history page holds them). */
const run = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => message(from + i, BOB, `m${from + i}`));
const shownSeqs = () => [...view.list.children].map((node) => Number(node.dataset.seq));
/** Wait until the list has drawn the steps it fills in after it is drawn (a screenful first). */
const filled = async () => {
  while (view._fillFrame || view._fillTimer) await new Promise((resolve) => setTimeout(resolve, 5));
};

test("a quote's parent not loaded is loaded with the messages around it in one request, as an island", async () => {
  await open([message(120, BOB, "late reply", { reply_to: 20 })]);
  assert.match(item(120).querySelector(".jce-quote").textContent, /an earlier message/);
  click(item(120).querySelector(".jce-quote"));
  const [first] = ws.framesOf("history");
  assert.deepEqual([first.around, first.limit, first.before], [20, 50, undefined]);
  // 10 before it (fewer than 25: the room's start), it, and 39 after: not the room's end
  const window = run(10, 59).map((m) => (m.seq === 20 ? message(20, ALICE, "the question") : m));
  ws.receive({ op: "history", room: "general", id: first.id, messages: window });
  assert.equal(ws.framesOf("history").length, 1, "one request");
  assert.ok(item(20).classList.contains("jce-flash"));
  await filled();
  assert.deepEqual(shownSeqs(), run(10, 59).map((m) => m.seq), "the island only");
  assert.deepEqual(conn.rooms.get("general").ranges, [[1, 59], [120, 120]]);
  assert.equal(view.earlierButton.hidden, true, "the island starts at the room's start");
  assert.equal(view.laterButton.hidden, false);
  assert.match(view.newButton.textContent, /Jump to newest/);
  assert.ok(view.newButton.classList.contains("jce-show"));
  // the quote in the live segment knows its parent now
  assert.match(conn.rooms.get("general").messages.at(-1).body, /late reply/);
  click(view.newButton);
  await filled();
  assert.deepEqual(shownSeqs(), [120], "back to the newest");
  assert.match(item(120).querySelector(".jce-quote").textContent, /Alice.*the question/);
  assert.equal(view.laterButton.hidden, true);
  click(item(120).querySelector(".jce-quote"));
  assert.equal(ws.framesOf("history").length, 1, "an island held is shown again without a request");
  assert.ok(item(20).classList.contains("jce-flash"));
});

test("load later fills the hole under an island until it joins the newest messages", async () => {
  await open(run(120, 130));
  view._jumpTo(20);
  ws.receive({ op: "history", room: "general", id: ws.framesOf("history")[0].id, messages: run(10, 59) });
  await filled();
  click(view.laterButton);
  const later = ws.framesOf("history")[1];
  assert.deepEqual([later.around, later.before], [60, undefined], "a wide hole: the window after the island");
  click(view.laterButton);
  assert.equal(ws.framesOf("history").length, 2, "asked once while on its way");
  ws.receive({ op: "history", room: "general", id: later.id, messages: run(35, 84) });
  await filled();
  assert.deepEqual(shownSeqs(), run(10, 84).map((m) => m.seq), "appended under the island");
  // a live message meanwhile joins the newest messages, not the island shown
  ws.receive(message(131, BOB, "live"));
  assert.equal(item(131), null);
  assert.equal(view.newButton.textContent, "1 new · Jump to newest ↓");
  // a change to a message of the island shows there
  ws.receive(change(132, "edit", message(40, BOB, "m40 edited", { edited: 2132 })));
  assert.match(item(40).textContent, /m40 edited/);
  click(view.laterButton);
  const last = ws.framesOf("history")[2];
  assert.deepEqual([last.before, last.around], [120, undefined], "a hole of one page: the page before the newest");
  ws.receive({ op: "history", room: "general", id: last.id, messages: run(70, 119) });
  await filled();
  assert.deepEqual(shownSeqs(), run(10, 131).map((m) => m.seq), "one segment again, the live one");
  assert.deepEqual(conn.rooms.get("general").ranges, [[1, 132]]);
  assert.equal(view.laterButton.hidden, true);
  assert.equal(view.newButton.textContent, "New messages ↓");
  ws.receive(message(133, BOB, "live again"));
  assert.ok(item(133), "live messages show again");
});

test("an island survives a resumed connection, and a join that is not recovered loads it again", async () => {
  await open(run(120, 130));
  view._jumpTo(20);
  ws.receive({ op: "history", room: "general", id: ws.framesOf("history")[0].id, messages: run(10, 59) });
  ws.onclose(); // the connection drops
  await new Promise((resolve) => setTimeout(resolve, 600));
  const next = FakeSocket.opened.at(-1);
  assert.notEqual(next, ws);
  next.receive({ op: "hello", user: ALICE, limits: { max_message_size: 100, history_page_size: 50 } });
  const join = next.framesOf("join")[0];
  assert.deepEqual(join.since, { epoch: "e", seq: 130 }, "resumed from the newest seen, not the island");
  next.receive({ op: "joined", room: "general", epoch: "e", seq: 131, recovered: true, history: [message(131, BOB, "missed")], changes: [], members: [ALICE, BOB], values: {} });
  assert.deepEqual(conn.rooms.get("general").ranges, [[1, 59], [120, 131]]);
  await filled();
  assert.deepEqual(shownSeqs(), run(10, 59).map((m) => m.seq), "the island stays shown");
  assert.equal(view.newButton.textContent, "1 new · Jump to newest ↓");
  // a new log: the island is gone with the rest, and loaded again around where it was
  next.receive({ op: "joined", room: "general", epoch: "e2", seq: 140, recovered: false, history: run(130, 140), members: [ALICE, BOB], values: {} });
  const again = next.framesOf("history").at(-1);
  assert.equal(again.around, 20);
  next.receive({ op: "history", room: "general", id: again.id, messages: run(1, 50) });
  assert.deepEqual(conn.rooms.get("general").ranges, [[1, 50], [130, 140]]);
  await filled();
  assert.deepEqual(shownSeqs(), run(1, 50).map((m) => m.seq));
  assert.equal(item(20).classList.contains("jce-flash"), false, "not highlighted: the same view");
});
