import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { ChatConnection } from "../src/connection.js";

const ALICE = { username: "alice", name: "Alice" };

/** A WebSocket the test plays the server of: it records what the client sends. */
class FakeSocket {
  static OPEN = 1;
  static opened = [];

  constructor(url) {
    this.url = url;
    this.readyState = FakeSocket.OPEN;
    this.sent = [];
    this.closed = false;
    FakeSocket.opened.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close() {
    this.closed = true;
  }

  /** A frame from the server. */
  receive(frame) {
    this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  /** The server (or the network) drops the connection. */
  drop() {
    this.readyState = 3;
    this.onclose();
  }

  framesOf(op) {
    return this.sent.filter((frame) => frame.op === op);
  }
}

const hello = { op: "hello", user: ALICE, limits: { max_message_size: 16384 } };
const message = (seq, body = `message ${seq}`, id = `m${seq}`) => ({
  op: "message",
  room: "general",
  seq,
  id,
  ts: 1000 + seq,
  user: ALICE,
  body,
});
const joined = (seq, history, recovered = false) => ({
  op: "joined",
  room: "general",
  epoch: "e1",
  seq,
  recovered,
  history,
  members: [ALICE],
  values: {},
});

let conn;

beforeEach(() => {
  FakeSocket.opened = [];
  mock.timers.enable({ apis: ["setTimeout"] });
  conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
});

afterEach(() => {
  conn.close();
  mock.timers.reset();
});

/** Open, say hello, join "general" with `history`; returns the socket. */
async function connected(history = [message(1), message(2)]) {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  conn.join("general");
  ws.receive(joined(history.length ? history.at(-1).seq : 0, history));
  return ws;
}

/** Drop the socket and let the backoff run out; returns the new socket, after hello. */
function reconnectAfterDrop(ws) {
  ws.drop();
  assert.equal(conn.state, "reconnecting");
  mock.timers.tick(10_000);
  const next = FakeSocket.opened.at(-1);
  assert.notEqual(next, ws, "a new socket was opened after the backoff");
  next.receive(hello);
  return next;
}

test("after a reconnect every room is joined again with since = the last seq seen", async () => {
  const ws = await connected();
  assert.deepEqual(ws.framesOf("join").map((f) => f.since), [undefined]);
  ws.receive(message(3));
  const next = reconnectAfterDrop(ws);
  const [join] = next.framesOf("join");
  assert.equal(join.room, "general");
  assert.deepEqual(join.since, { epoch: "e1", seq: 3 });
  assert.equal(conn.state, "connected");
});

test("a resumed join adds only what was missed; a replay of known seqs is dropped", async () => {
  const ws = await connected();
  const seen = [];
  conn.on("message", (room, m) => seen.push(m.seq));
  conn.on("reset", () => seen.push("reset"));
  const next = reconnectAfterDrop(ws);
  next.receive(joined(4, [message(2), message(3), message(4)], true));
  next.receive(message(3)); // delivered twice by the server: still shown once
  next.receive(message(5));
  assert.deepEqual(seen, [3, 4, 5]);
  assert.deepEqual(conn.rooms.get("general").messages.map((m) => m.seq), [1, 2, 3, 4, 5]);
});

test("a join the server could not recover replaces the room's messages", async () => {
  const ws = await connected();
  let resets = 0;
  conn.on("reset", () => (resets += 1));
  const next = reconnectAfterDrop(ws);
  next.receive({ ...joined(9, [message(8), message(9)], false), epoch: "e2" });
  assert.equal(resets, 1);
  assert.deepEqual(conn.rooms.get("general").messages.map((m) => m.seq), [8, 9]);
});

test("messages not acknowledged are resent once after the reconnect, with their ids", async () => {
  const ws = await connected();
  const id = conn.send("general", "are you there?");
  assert.equal(ws.framesOf("send").length, 1);
  const next = reconnectAfterDrop(ws);
  assert.equal(next.framesOf("send").length, 0, "nothing is sent before the room is joined");
  next.receive(joined(2, [message(1), message(2)], true));
  assert.deepEqual(next.framesOf("send"), [{ op: "send", room: "general", id, body: "are you there?" }]);
  next.receive(message(3, "are you there?", id));
  assert.equal(conn.rooms.get("general").pending.size, 0);
  next.receive(joined(3, [], true)); // joined again later: nothing left to resend
  assert.equal(next.framesOf("send").length, 1);
});

test("a message the server asks to retry is resent after retry_after, once", async () => {
  for (const code of ["rate_limited", "unavailable"]) {
    const ws = await connected();
    const errors = [];
    conn.on("error", (frame) => errors.push(frame));
    const id = conn.send("general", `wait for it (${code})`);
    ws.receive({ op: "error", room: "general", id, code, message: "slow down", retry_after: 2 });
    assert.equal(ws.framesOf("send").length, 1);
    mock.timers.tick(1999);
    assert.equal(ws.framesOf("send").length, 1, "not before retry_after");
    mock.timers.tick(1);
    assert.deepEqual(ws.framesOf("send")[1], { op: "send", room: "general", id, body: `wait for it (${code})` });
    ws.receive(message(3, `wait for it (${code})`, id));
    mock.timers.tick(10_000);
    assert.equal(ws.framesOf("send").length, 2);
    assert.deepEqual(errors, [], "a retried message is not reported as an error");
    conn.close();
    conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
  }
});

test("any other refusal drops the pending message and is reported", async () => {
  const ws = await connected();
  const errors = [];
  conn.on("error", (frame) => errors.push(frame.code));
  const id = conn.send("general", "x".repeat(10));
  ws.receive({ op: "error", room: "general", id, code: "too_large", message: "too large" });
  assert.deepEqual(errors, ["too_large"]);
  assert.equal(conn.rooms.get("general").pending.size, 0);
});

test("a frame that cannot be read is reported, and the next ones still arrive", async () => {
  const ws = await connected();
  const reports = [];
  conn.on("undecodable", (reason) => reports.push(reason));
  ws.receive("{not json");
  ws.onmessage({ data: new ArrayBuffer(2) }); // shorter than a binary frame's header
  ws.receive(message(3));
  assert.equal(reports.length, 2);
  assert.match(reports[0], /could not be read .*it was skipped/);
  assert.equal(conn.rooms.get("general").messages.at(-1).seq, 3);
});

test("a room shown in two windows is left only when the last one leaves it", async () => {
  const ws = await connected();
  conn.join("general"); // a second view of the same room: no second join frame
  assert.equal(ws.framesOf("join").length, 1);
  conn.leave("general");
  assert.equal(ws.framesOf("leave").length, 0);
  assert.ok(conn.rooms.has("general"));
  conn.leave("general");
  assert.deepEqual(ws.framesOf("leave").map((f) => f.room), ["general"]);
  assert.ok(!conn.rooms.has("general"));
});

test("a value's update names its topic, a join redraws them all", async () => {
  const ws = await connected();
  const seen = [];
  conn.on("values", (room, topic) => seen.push(topic));
  ws.receive({ op: "data", room: "general", topic: "t", value: 1, user: ALICE, ts: 5 });
  ws.receive(joined(2, [], true));
  assert.deepEqual(seen, ["t", undefined]);
});

const BOB = { username: "bob", name: "Bob" };
const changeOf = (seq, kind, target, now, { id = `c${seq}`, user = BOB, emoji } = {}) => ({
  op: "change",
  room: "general",
  seq,
  id,
  ts: 2000 + seq,
  user,
  kind,
  target,
  emoji,
  message: { ...message(target), ...now, rev: seq },
});

test("a reply is sent with reply_to, and resent with it after a reconnect", async () => {
  const ws = await connected();
  const id = conn.send("general", "agreed", 2);
  assert.deepEqual(ws.framesOf("send"), [{ op: "send", room: "general", id, body: "agreed", reply_to: 2 }]);
  const next = reconnectAfterDrop(ws);
  next.receive(joined(2, [], true));
  assert.deepEqual(next.framesOf("send"), [{ op: "send", room: "general", id, body: "agreed", reply_to: 2 }]);
  const changed = [];
  conn.on("changed", (room, m) => changed.push([m.seq, m.replies]));
  next.receive({ ...message(3, "agreed", id), reply_to: 2, parent_replies: 1 });
  assert.deepEqual(changed, [[2, 1]], "the parent's reply count is redrawn");
  assert.equal(conn.rooms.get("general").pending.size, 0);
});

test("edit, delete, react and unreact go out with fresh ids and are kept until their change comes back", async () => {
  const ws = await connected();
  const changed = [];
  conn.on("changed", (room, m) => changed.push(m.seq));
  const ids = [
    conn.edit("general", 1, "better words"),
    conn.react("general", 2, "👍"),
    conn.unreact("general", 2, "👍"),
    conn.deleteMessage("general", 1),
  ];
  assert.equal(new Set(ids).size, 4);
  assert.deepEqual(ws.sent.filter((f) => f.op !== "join"), [
    { op: "edit", room: "general", id: ids[0], seq: 1, body: "better words" },
    { op: "react", room: "general", id: ids[1], seq: 2, emoji: "👍" },
    { op: "unreact", room: "general", id: ids[2], seq: 2, emoji: "👍" },
    { op: "delete", room: "general", id: ids[3], seq: 1 },
  ]);
  const room = conn.rooms.get("general");
  assert.deepEqual(changed, [1, 2, 2, 1], "each request redraws its message (shown as pending)");
  assert.deepEqual(room.changesOf(2).map((f) => f.op), ["react", "unreact"]);
  // the server's change with our id acknowledges it; the copy is replaced
  ws.receive(changeOf(3, "edit", 1, { body: "better words", edited: 2003 }, { id: ids[0], user: ALICE }));
  assert.equal(room.messages[0].body, "better words");
  assert.equal(room.changing.size, 3);
  // someone else's change with the same id is not an acknowledgement of ours
  ws.receive(changeOf(4, "react", 2, { reactions: { "👍": ["bob"] } }, { id: ids[1], user: BOB, emoji: "👍" }));
  assert.equal(room.changing.size, 3);
  ws.receive(changeOf(5, "react", 2, { reactions: { "👍": ["bob", "alice"] } }, { id: ids[1], user: ALICE, emoji: "👍" }));
  assert.deepEqual(room.messages[1].reactions, { "👍": ["bob", "alice"] });
  assert.equal(room.changing.size, 2);
  assert.equal(room.seq, 5);
});

test("hello.moderator is kept on the connection, and taken again from each hello", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  assert.equal(conn.moderator, false, "false before any hello");
  ws.receive({ ...hello, moderator: true });
  assert.equal(conn.moderator, true);
  ws.drop();
  mock.timers.tick(10_000);
  FakeSocket.opened.at(-1).receive(hello);
  assert.equal(conn.moderator, false, "a hello without it (no longer a moderator) takes it back");
});

test("changes not acknowledged are resent after a reconnect, with their ids; acknowledged in the gap, they are not", async () => {
  const ws = await connected();
  const edit = conn.edit("general", 1, "edited offline?");
  const react = conn.react("general", 2, "🎉");
  const next = reconnectAfterDrop(ws);
  assert.equal(next.framesOf("edit").length, 0, "nothing before the room is joined");
  // the edit was applied before the drop: the gap lists it
  const gapChange = changeOf(3, "edit", 1, { body: "edited offline?", edited: 2003 }, { id: edit, user: ALICE });
  next.receive({ ...joined(3, [], true), changes: [gapChange] });
  assert.equal(conn.rooms.get("general").messages[0].body, "edited offline?");
  assert.deepEqual(next.framesOf("edit"), []);
  assert.deepEqual(next.framesOf("react"), [{ op: "react", room: "general", id: react, seq: 2, emoji: "🎉" }]);
});

test("a change the server asks to retry is resent after retry_after; a refused one is dropped and reported", async () => {
  const ws = await connected();
  const errors = [];
  conn.on("error", (frame) => errors.push(frame.code));
  const changed = [];
  conn.on("changed", (room, m) => changed.push(m.seq));
  const id = conn.react("general", 1, "🚀");
  ws.receive({ op: "error", room: "general", id, code: "rate_limited", message: "slow down", retry_after: 1 });
  mock.timers.tick(1000);
  assert.equal(ws.framesOf("react").length, 2);
  assert.deepEqual(ws.framesOf("react")[1], ws.framesOf("react")[0]);
  for (const code of ["forbidden", "not_found", "message_deleted", "too_many_reactions"]) {
    const other = conn.edit("general", 2, `refused: ${code}`);
    ws.receive({ op: "error", room: "general", id: other, code, message: code });
    assert.equal(conn.rooms.get("general").changesOf(2).length, 0);
  }
  assert.deepEqual(errors, ["forbidden", "not_found", "message_deleted", "too_many_reactions"]);
  assert.deepEqual(changed, [1, 2, 2, 2, 2, 2, 2, 2, 2], "drawn pending, then drawn without it");
  assert.equal(conn.rooms.get("general").changing.size, 1);
});

test("a history request lost with its connection does not block loading earlier messages", async () => {
  const ws = await connected([message(5), message(6)]);
  conn.loadEarlier("general");
  assert.equal(ws.framesOf("history").length, 1);
  const next = reconnectAfterDrop(ws);
  next.receive(joined(6, [], true));
  conn.loadEarlier("general");
  assert.equal(next.framesOf("history").length, 1);
  next.receive({ op: "history", room: "general", id: next.framesOf("history")[0].id, messages: [message(3), message(4)] });
  assert.deepEqual(conn.rooms.get("general").messages.map((m) => m.seq), [3, 4, 5, 6]);
});

test("a change to a message loaded later reaches it when its page comes", async () => {
  const ws = await connected([message(5), message(6)]);
  ws.receive(changeOf(7, "delete", 4, { deleted: true, body: "" }));
  conn.loadEarlier("general");
  ws.receive({ op: "history", room: "general", id: ws.framesOf("history")[0].id, messages: [message(3), message(4)] });
  const room = conn.rooms.get("general");
  assert.deepEqual(room.messages.map((m) => [m.seq, m.deleted ?? false, m.body]), [
    [3, false, "message 3"],
    [4, true, ""],
    [5, false, "message 5"],
    [6, false, "message 6"],
  ]);
});

// ---- read markers and mentions (#15) ---------------------------------------------------

const mentioning = (room, seq) => ({ op: "message", room, seq, id: `x${seq}`, ts: 2000 + seq, user: BOB, body: "@alice hi", mentions: ["alice"] });

test("the read marker: joined.read, only forward, the same for every tab (read frames), a refusal said nowhere", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  const room = conn.join("general");
  assert.equal(conn.markRead("general", 2), null, "not joined yet");
  const moved = [];
  conn.on("read", (name) => moved.push(name));
  ws.receive({ ...joined(5, [message(4), message(5)]), read: 3 });
  assert.equal(room.read, 3);
  const id = conn.markRead("general", 5);
  assert.deepEqual(ws.framesOf("read"), [{ op: "read", room: "general", seq: 5, id }]);
  assert.equal(conn.markRead("general", 5), null, "sent already");
  assert.equal(conn.markRead("general", 2), null, "behind the marker");
  ws.receive({ op: "read", room: "general", seq: 5, id });
  assert.equal(room.read, 5);
  ws.receive({ op: "read", room: "general", seq: 4 }); // an older one, late
  assert.equal(room.read, 5, "never back");
  ws.receive({ op: "read", room: "general", seq: 7 }); // read in another tab
  assert.equal(room.read, 7);
  ws.receive({ op: "read", room: "elsewhere", seq: 3 }); // a room not joined here
  assert.equal(conn.mentions.markers.get("elsewhere"), 3);
  assert.deepEqual(moved, ["general", "general", "general", "elsewhere"]);
  // a refused read marker (the room was left meanwhile) is no error to show, and is sent again
  const errors = [];
  conn.on("error", (frame) => errors.push(frame));
  ws.receive(message(8));
  const again = conn.markRead("general", 8);
  ws.receive({ op: "error", code: "not_joined", id: again, room: "general", message: "x" });
  assert.deepEqual(errors, []);
  assert.ok(conn.markRead("general", 8), "it may go again");
});

test("a reconnect forgets the read markers sent but not answered: the server's is what holds", async () => {
  const ws = await connected();
  const room = conn.rooms.get("general");
  assert.ok(conn.markRead("general", 2));
  const next = reconnectAfterDrop(ws);
  next.receive({ ...joined(2, [], true), read: 0 });
  assert.equal(room.read, 0);
  assert.ok(conn.markRead("general", 2), "sent again on the new connection");
});

test("unread mentions: the list after hello, live ones, emptied by read markers, dropped when deleted", async () => {
  const ws = await connected();
  const live = [];
  conn.on("mention", (room, m) => live.push(`${room}:${m.seq}`));
  let changes = 0;
  conn.on("mentions", () => (changes += 1));
  ws.receive({ op: "mentions", mentions: [mentioning("lab", 4), mentioning("general", 2)] });
  assert.equal(conn.mentions.entries.size, 2);
  assert.deepEqual(live, [], "the list after hello is not news");
  ws.receive({ op: "mention", room: "lab", message: mentioning("lab", 6) });
  ws.receive({ op: "mention", room: "lab", message: mentioning("lab", 6) });
  assert.deepEqual(live, ["lab:6"], "once");
  ws.receive({ op: "mention", room: "lab", message: { ...mentioning("lab", 7), room: "other" } });
  assert.equal(live.length, 1, "a message of another room than the frame says is not taken");
  ws.receive({ op: "read", room: "lab", seq: 6 });
  assert.deepEqual([...conn.mentions.entries.values()].map((e) => `${e.room}:${e.seq}`), ["general:2"]);
  // general is joined: a deletion of the mentioning message takes it off the list
  const gone = { ...mentioning("general", 2), deleted: true, body: "", mentions: [], rev: 3 };
  ws.receive({ op: "change", room: "general", seq: 3, id: "d", ts: 1, user: BOB, kind: "delete", target: 2, message: gone });
  assert.equal(conn.mentions.entries.size, 0);
  assert.ok(changes >= 4);
});

/** Messages `from`..`to` (a history page's). */
const run = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => message(from + i));
const seqs = (room) => room.messages.map((m) => m.seq);

test("the messages around an old one come in one request, as an island apart from the newest", async () => {
  const ws = await connected(run(901, 1000));
  const loaded = [];
  conn.on("loaded", (room, added, request) => loaded.push([added.length, request.kind]));
  const id = conn.loadAround("general", 100, 50);
  assert.equal(conn.loadAround("general", 100, 50), null, "asked once");
  assert.equal(conn.loadAround("general", 950, 50), null, "held already");
  assert.equal(conn.loadAround("general", 1001, 50), null, "not in the log yet");
  const [frame] = ws.framesOf("history");
  assert.deepEqual([frame.id, frame.around, frame.limit, frame.before], [id, 100, 50, undefined]);
  assert.equal(conn.loading("general"), true);
  ws.receive({ op: "history", room: "general", id, messages: run(75, 124) });
  const room = conn.rooms.get("general");
  assert.equal(conn.loading("general"), false);
  assert.deepEqual(room.ranges, [[75, 124], [901, 1000]]);
  assert.deepEqual(room.holes, [[124, 901]]);
  assert.deepEqual(seqs(room), [...run(75, 124), ...run(901, 1000)].map((m) => m.seq));
  assert.deepEqual(loaded, [[50, "around"]]);
  assert.equal(room.reachedStart, false);
  // live messages and changes keep coming into the newest segment, and to the island
  ws.receive(message(1001));
  ws.receive(changeOf(1002, "edit", 80, { body: "edited in the island" }));
  assert.deepEqual(room.ranges, [[75, 124], [901, 1002]]);
  assert.equal(room.messages.find((m) => m.seq === 80).body, "edited in the island");
  // earlier pages grow the island, the oldest segment by default
  conn.loadEarlier("general", 50);
  const earlier = ws.framesOf("history")[1];
  assert.equal(earlier.before, 75);
  ws.receive({ op: "history", room: "general", id: earlier.id, messages: run(25, 74) });
  assert.deepEqual(room.ranges, [[25, 124], [901, 1002]]);
  // and later ones toward the newest, until they join
  conn.loadLater("general", 100, 50);
  const later = ws.framesOf("history")[2];
  assert.deepEqual([later.around, later.limit], [125, 50]);
  ws.receive({ op: "history", room: "general", id: later.id, messages: run(100, 149) });
  assert.deepEqual(room.ranges, [[25, 149], [901, 1002]]);
  assert.equal(conn.loadLater("general", 1000, 50), null, "the live segment has nothing later");
});

test("a window that reaches the room's end joins the live segment; one past it leaves the rest to come live", async () => {
  const ws = await connected(run(301, 400));
  const id = conn.loadAround("general", 280, 50);
  // 25 before 280, then 280..300 and the first live ones: fewer after than asked
  ws.receive({ op: "history", room: "general", id, messages: [...run(255, 300), ...run(301, 305), message(401)] });
  const room = conn.rooms.get("general");
  assert.deepEqual(room.ranges, [[255, 400]], "one segment");
  assert.equal(room.messages.filter((m) => m.seq === 401).length, 0, "401 comes live");
  ws.receive(message(401));
  assert.deepEqual(seqs(room).slice(-3), [399, 400, 401]);
  assert.deepEqual(room.ranges, [[255, 401]]);
});

test("islands: a resume extends only the live segment; a fresh join forgets them; a lost request is asked again", async () => {
  const ws = await connected(run(901, 1000));
  conn.loadAround("general", 100, 50);
  const [frame] = ws.framesOf("history");
  ws.receive({ op: "history", room: "general", id: frame.id, messages: run(75, 124) });
  conn.loadLater("general", 100, 50);
  let next = reconnectAfterDrop(ws);
  const join = next.framesOf("join")[0];
  assert.deepEqual(join.since, { epoch: "e1", seq: 1000 });
  next.receive(joined(1002, [message(1001), message(1002)], true));
  const room = conn.rooms.get("general");
  assert.deepEqual(room.ranges, [[75, 124], [901, 1002]]);
  assert.equal(conn.loading("general"), false, "the request lost with the connection is forgotten");
  assert.ok(conn.loadLater("general", 100, 50), "and can be asked again");
  // an answer to a request not made (or made on a connection gone) changes nothing
  next.receive({ op: "history", room: "general", id: "not asked", messages: run(200, 210) });
  assert.equal(room.messages.some((m) => m.seq === 200), false);
  // a refused request is forgotten too, and said
  const errors = [];
  conn.on("error", (error) => errors.push([error.code, error.request && error.request.op]));
  next.receive({ op: "error", room: "general", id: next.framesOf("history").at(-1).id, code: "unavailable", message: "x" });
  assert.deepEqual(errors, [["unavailable", "history"]]);
  assert.equal(conn.loading("general"), false);
  next = reconnectAfterDrop(next);
  next.receive(joined(1100, run(1001, 1100)));
  assert.deepEqual(room.ranges, [[1001, 1100]], "a join not recovered: one segment, the fresh history");
  assert.deepEqual(room.holes, []);
});

// ---- members: the count, batched presence and pages (#17 item 1) -----------------------

const CAROL = { username: "carol", name: "carol" };
const DAN = { username: "dan", name: "dan" };
const names = (room) => [...room.members.keys()];

test("joined: member_count is the room's count, members its first page; more are offered", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  const room = conn.join("general");
  ws.receive({ ...joined(0, []), members: [ALICE, BOB], member_count: 1234 });
  assert.deepEqual(names(room), ["alice", "bob"]);
  assert.equal(room.memberCount, 1234);
  assert.equal(room.moreMembers, true);
});

test("an old server's joined (no count) counts the members it lists, and offers no more", async () => {
  const ws = await connected();
  const room = conn.rooms.get("general");
  assert.equal(room.memberCount, 1);
  assert.equal(room.moreMembers, false);
  assert.equal(conn.loadMembers("general"), null);
  assert.deepEqual(ws.framesOf("members"), []);
});

test("presence batches add, update and remove members by username; count replaces the count", async () => {
  const ws = await connected();
  const room = conn.rooms.get("general");
  const events = [];
  conn.on("members", (r) => events.push(r.memberCount));
  ws.receive({ op: "presence", room: "general", count: 1000, joined: [BOB, CAROL, { ...ALICE, name: "Alice A." }] });
  assert.deepEqual(names(room), ["alice", "bob", "carol"]);
  assert.equal(room.members.get("alice").name, "Alice A.", "an entry that joins again is updated");
  ws.receive({ op: "presence", room: "general", count: 999, left: [BOB], joined: [{ ...CAROL, kernel: true }] });
  assert.deepEqual(names(room), ["alice", "carol"]);
  assert.equal(room.members.get("carol").kernel, true);
  ws.receive({ op: "presence", room: "general", count: 999, joined: [{ ...CAROL, kernel: true }] });
  assert.deepEqual(names(room), ["alice", "carol"], "idempotent");
  assert.deepEqual(events, [1000, 999, 999]);
});

test("the old single-user presence form still adds and removes a member", async () => {
  const ws = await connected();
  const room = conn.rooms.get("general");
  ws.receive({ op: "presence", room: "general", joined: BOB });
  assert.deepEqual(names(room), ["alice", "bob"]);
  assert.equal(room.memberCount, 2);
  ws.receive({ op: "presence", room: "general", left: ALICE });
  assert.deepEqual(names(room), ["bob"]);
  assert.equal(room.memberCount, 1);
});

test("malformed user entries in joined, presence and members pages are skipped, the rest kept", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  const room = conn.join("general");
  const junk = [null, 7, "bob", [], {}, { username: 5 }, { username: "" }, { name: "no username" }];
  ws.receive({ ...joined(0, []), members: [...junk, ALICE], member_count: 50 });
  assert.deepEqual(names(room), ["alice"]);
  ws.receive({ op: "presence", room: "general", count: "many", joined: [...junk, BOB], left: [...junk] });
  assert.deepEqual(names(room), ["alice", "bob"]);
  assert.equal(room.memberCount, 2, "a count that is no number is not taken");
  ws.receive({ op: "presence", room: "general", count: 50, joined: "bob", left: { username: null } });
  assert.deepEqual(names(room), ["alice", "bob"]);
  const id = conn.loadMembers("general");
  ws.receive({ op: "members", room: "general", id, members: [...junk, CAROL], count: 50, next: "carol" });
  assert.deepEqual(names(room), ["alice", "bob", "carol"]);
  ws.receive({ op: "members", room: "general", id: conn.loadMembers("general"), members: "everyone", count: 50 });
  assert.deepEqual(names(room), ["alice", "bob", "carol"]);
  assert.equal(room.moreMembers, false, "a page with no next is the last");
});

test("loadMembers asks the next page after the cursor, one at a time, until there is no next", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  const room = conn.join("general");
  ws.receive({ ...joined(0, []), members: [DAN], member_count: 4 });
  const first = conn.loadMembers("general", 2);
  assert.equal(conn.loadMembers("general", 2), null, "one page on its way at a time");
  assert.deepEqual(ws.framesOf("members"), [{ op: "members", room: "general", id: first, limit: 2 }]);
  ws.receive({ op: "members", room: "general", id: "someone else's", members: [BOB], count: 4 });
  assert.deepEqual(names(room), ["dan"], "an answer not asked for is ignored");
  ws.receive({ op: "members", room: "general", id: first, members: [ALICE, BOB], count: 4, next: "bob" });
  assert.deepEqual(names(room), ["dan", "alice", "bob"]);
  const second = conn.loadMembers("general", 2);
  assert.equal(ws.framesOf("members")[1].after, "bob");
  ws.receive({ op: "members", room: "general", id: second, members: [CAROL, DAN], count: 4 });
  assert.deepEqual(names(room), ["dan", "alice", "bob", "carol"]);
  assert.equal(room.moreMembers, false);
  assert.equal(conn.loadMembers("general"), null);
});

test("a refused members page stops the paging; a rejoin starts it again from the first page", async () => {
  await conn.open();
  const ws = FakeSocket.opened.at(-1);
  ws.receive(hello);
  const room = conn.join("general");
  ws.receive({ ...joined(0, []), members: [ALICE], member_count: 3 });
  const id = conn.loadMembers("general");
  ws.receive({ op: "error", room: "general", id, code: "bad_request", message: "unknown op" });
  assert.equal(room.membersRequest, null);
  assert.equal(room.moreMembers, false);
  const next = reconnectAfterDrop(ws);
  next.receive({ ...joined(0, []), members: [BOB], member_count: 3 });
  assert.deepEqual(names(room), ["bob"]);
  assert.equal(room.moreMembers, true);
  assert.equal(next.framesOf("members").length, 0);
  conn.loadMembers("general");
  assert.equal(next.framesOf("members")[0].after, undefined, "from the first page again");
});
