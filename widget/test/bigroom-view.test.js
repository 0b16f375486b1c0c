import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { FakeSocket, installPage } from "./page.js";

// The window with long histories, busy rooms and big rooms (#17): the list drawn a
// screenful first and filled in steps, nodes kept across a reconnect, values updated in
// place, members counted and paged. The real view on the real connection; the test plays
// the server. jsdom has no layout, so what depends on sizes (trimming) is not seen here.
const window = installPage();
const { ChatConnection } = await import("../src/connection.js");
const { ChatView } = await import("../src/view.js");

const ALICE = { username: "alice", name: "alice", display_name: "Alice" };
const BOB = { username: "bob", name: "bob", display_name: "Bob" };
const message = (seq, user = BOB, body = `m${seq}`) => ({ op: "message", room: "general", seq, id: `m${seq}`, ts: 1000 + seq, user, body });
const run = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => message(from + i));

let conn;
let view;
let ws;
let el;

async function open(history, joinedFields = {}) {
  FakeSocket.opened = [];
  conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
  await conn.open();
  ws = FakeSocket.opened.at(-1);
  ws.receive({ op: "hello", user: ALICE, limits: { max_message_size: 100, history_page_size: 50 } });
  el = document.createElement("div");
  document.body.append(el);
  view = new ChatView(el, conn, { room: "general" });
  const seq = history.length ? history.at(-1).seq : 0;
  ws.receive({ op: "joined", room: "general", epoch: "e", seq, recovered: false, history, members: [ALICE, BOB], values: {}, ...joinedFields });
}

afterEach(() => {
  view.destroy();
  conn.close();
  el.remove();
});

const shownSeqs = () => [...view.list.children].map((node) => Number(node.dataset.seq));
const nextFrame = () => new Promise((resolve) => window.requestAnimationFrame(() => setTimeout(resolve, 0)));
const filled = async () => {
  while (view._fillFrame || view._fillTimer) await new Promise((resolve) => setTimeout(resolve, 5));
};
const click = (node) => node.dispatchEvent(new window.MouseEvent("click", { bubbles: true }));

test("a long history is drawn a screenful first, the newest, then filled in steps up to the fill size", async () => {
  await open(run(1, 400));
  const first = shownSeqs();
  assert.ok(first.length > 0 && first.length <= 30, `a screenful first (${first.length})`);
  assert.equal(first.at(-1), 400, "the newest message is drawn at once");
  await filled();
  const all = shownSeqs();
  assert.equal(all.length, 150, "filled to the fill size, not all 400");
  assert.deepEqual(all, run(251, 400).map((m) => m.seq));
  assert.equal(view.earlierButton.hidden, false, "messages held above the window: earlier shows");
  click(view.earlierButton);
  assert.equal(shownSeqs()[0], 236, "'load earlier' draws held messages first, a step");
  assert.equal(ws.framesOf("history").length, 0, "nothing asked of the server while they are held");
});

test("a reconnect as the same person keeps every message node; a reset room keeps those unchanged", async () => {
  await open(run(1, 40));
  await filled();
  const before = new Map([...view.list.children].map((node) => [node.dataset.seq, node]));
  ws.onclose();
  await new Promise((resolve) => setTimeout(resolve, 600));
  const next = FakeSocket.opened.at(-1);
  next.receive({ op: "hello", user: ALICE, limits: { max_message_size: 100, history_page_size: 50 } });
  assert.ok([...view.list.children].every((node) => before.get(node.dataset.seq) === node), "hello draws nothing again");
  // not recovered: the same messages come again, one of them edited meanwhile
  const history = run(1, 41);
  history[29] = { ...history[29], body: "edited", edited: 2000, rev: 42 };
  next.receive({ op: "joined", room: "general", epoch: "e", seq: 42, recovered: false, history, members: [ALICE, BOB], values: {} });
  await filled();
  assert.deepEqual(shownSeqs(), run(1, 41).map((m) => m.seq));
  const kept = [...view.list.children].filter((node) => before.get(node.dataset.seq) === node).map((node) => Number(node.dataset.seq));
  // (the first, under the "new messages" line, is drawn again with it)
  assert.deepEqual(kept, run(2, 40).map((m) => m.seq).filter((seq) => seq !== 30), "unchanged messages keep their nodes");
  assert.match(view.list.querySelector('li[data-seq="30"]').textContent, /edited/);
});

test("live values update their row in place, once per frame, only the topics that changed", async () => {
  await open([]);
  const value = (topic, v, ts) => ({ op: "data", room: "general", topic, value: v, user: BOB, ts });
  ws.receive(value("loss", 1, 10));
  ws.receive(value("acc", 0.5, 10));
  await nextFrame();
  const row = (topic) => view.valuesList.querySelector(`[data-topic="${topic}"]`);
  const [loss, acc] = [row("loss"), row("acc")];
  assert.deepEqual([...view.valuesList.children].map((n) => n.dataset.topic), ["acc", "loss"]);
  const accText = acc.querySelector(".jce-value-text");
  for (let i = 0; i < 50; i += 1) ws.receive(value("loss", 1 / (i + 2), 11 + i));
  assert.equal(loss.querySelector(".jce-value-text").textContent, "1", "not drawn before the frame");
  await nextFrame();
  assert.equal(row("loss"), loss, "the same row");
  assert.equal(loss.querySelector(".jce-value-text").textContent, String(Number((1 / 51).toPrecision(6))));
  const line = loss.querySelector("polyline");
  assert.ok(line, "a sparkline of the series");
  ws.receive(value("loss", 7, 100));
  await nextFrame();
  assert.equal(loss.querySelector("polyline"), line, "the sparkline's line moved, not drawn anew");
  assert.equal(acc.querySelector(".jce-value-text"), accText);
  ws.receive(value("loss", { kind: "oops" }, 101));
  await nextFrame();
  assert.equal(row("loss"), loss);
  assert.match(loss.querySelector(".jce-value-text").textContent, /oops/);
});

test("members: the count, the members known, and Show more asking the next page", async () => {
  await open([], { members: [ALICE, null, { username: 3 }, BOB], member_count: 1234 });
  await nextFrame();
  assert.equal(view.membersTitle.textContent, "Members · 1,234");
  const names = () => [...view.memberList.children].map((n) => n.dataset.username);
  assert.deepEqual(names(), ["alice", "bob"], "malformed entries left out");
  assert.equal(view.moreMembers.hidden, false);
  const aliceItem = view.memberList.firstElementChild;
  click(view.moreMembers);
  const [page] = ws.framesOf("members");
  assert.deepEqual([page.room, page.after], ["general", undefined]);
  assert.equal(view.moreMembers.disabled, true, "one page at a time");
  const CAROL = { username: "carol", display_name: "Carol" };
  ws.receive({ op: "members", room: "general", id: page.id, members: [{ username: "" }, ALICE, CAROL], count: 1235, next: "carol" });
  await nextFrame();
  assert.deepEqual(names(), ["alice", "bob", "carol"]);
  assert.equal(view.memberList.firstElementChild, aliceItem, "items of members unchanged are kept");
  assert.equal(view.membersTitle.textContent, "Members · 1,235");
  assert.equal(view.moreMembers.disabled, false);
  click(view.moreMembers);
  assert.equal(ws.framesOf("members")[1].after, "carol");
  ws.receive({ op: "presence", room: "general", count: 1234, left: [BOB], joined: [{ ...CAROL, display_name: "Caroline" }] });
  await nextFrame();
  assert.deepEqual(names(), ["alice", "carol"]);
  assert.match(view.memberList.children[1].textContent, /Caroline/);
  ws.receive({ op: "members", room: "general", id: ws.framesOf("members")[1].id, members: [], count: 2 });
  await nextFrame();
  assert.equal(view.moreMembers.hidden, true, "the last page: nothing more to show");
  assert.equal(view.membersTitle.textContent, "Members · 2");
});
