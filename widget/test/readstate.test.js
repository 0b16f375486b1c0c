import assert from "node:assert/strict";
import { test } from "node:test";

import { badgeText, firstUnread, linePlace, mentionNotice, readTarget, titleText, unreadCount } from "../src/readstate.js";

const ALICE = { username: "alice" };
const BOB = { username: "bob" };
const message = (seq, user, fields = {}) => ({ seq, user, body: `m${seq}`, ...fields });
// bob's view: seqs 4..9, his own at 6, a deleted one at 8
const ROOM = [
  message(4, ALICE),
  message(5, ALICE),
  message(6, BOB),
  message(7, ALICE),
  message(8, ALICE, { deleted: true, body: "" }),
  message(9, ALICE),
];

test("unread: others' messages past the marker that are not deleted", () => {
  assert.deepEqual(unreadCount(ROOM, 9, "bob", [[1, 9]]), { count: 0, more: false });
  assert.deepEqual(unreadCount(ROOM, 5, "bob", [[1, 9]]), { count: 2, more: false }, "7 and 9: not bob's 6, not the deleted 8");
  assert.deepEqual(unreadCount(ROOM, 6, "bob", [[1, 9]]), { count: 2, more: false });
  assert.deepEqual(unreadCount([], 0, "bob"), { count: 0, more: false });
});

test("unread: a marker older than the first message held means there may be more", () => {
  assert.deepEqual(unreadCount(ROOM, 0, "bob", [[4, 9]]), { count: 4, more: true });
  assert.deepEqual(unreadCount(ROOM, 3, "bob", [[4, 9]]), { count: 4, more: false }, "held from just after the marker");
  assert.deepEqual(unreadCount(ROOM, 0, "bob", [[1, 9]]), { count: 4, more: false }, "the room's start is held");
});

test("unread with an island: what it holds past the marker counts, and the hole after it may hold more", () => {
  // bob opened the room at message 4 (an island 4..6); the live messages are 8..9
  const island = ROOM.filter((m) => m.seq !== 7);
  assert.deepEqual(unreadCount(island, 3, "bob", [[4, 6], [8, 9]]), { count: 3, more: true }, "4, 5 and 9; 7 is in the hole");
  assert.deepEqual(unreadCount(island, 7, "bob", [[4, 6], [8, 9]]), { count: 1, more: false }, "read up to the hole's end");
});

test("the badge says the count, '+' when there may be more, and caps at 99+", () => {
  assert.equal(badgeText({ count: 0, more: false }), "");
  assert.equal(badgeText({ count: 0, more: true }), "");
  assert.equal(badgeText({ count: 3, more: false }), "3");
  assert.equal(badgeText({ count: 3, more: true }), "3+");
  assert.equal(badgeText({ count: 100, more: false }), "99+");
});

test("the 'new messages' line goes before the first unread message of someone else", () => {
  assert.equal(firstUnread(ROOM, 5, "bob"), 7, "not before bob's own 6");
  assert.equal(firstUnread(ROOM, 7, "bob"), 9, "not before the deleted 8");
  assert.equal(firstUnread(ROOM, 9, "bob"), null, "all read: no line");
  assert.equal(firstUnread(ROOM, 0, "bob"), 4);
  assert.equal(firstUnread(ROOM, null, "bob"), null, "no marker known yet");
});

test("the line stays while you attend the room, and follows your marker while you do not", () => {
  assert.equal(linePlace(7, true, 9), 7, "attending: it stays where it was when you came");
  assert.equal(linePlace(null, true, 9), null, "attending: what arrives while you watch is not marked");
  assert.equal(linePlace(undefined, true, 9), 9, "just came: placed now");
  assert.equal(linePlace(undefined, true, undefined), undefined, "marker not known yet: placed later");
  assert.equal(linePlace(7, false, 9), 9, "away: it follows");
  assert.equal(linePlace(7, false, null), null);
});

test("a read marker goes out only forward of the known one and of the last sent", () => {
  assert.equal(readTarget(5, 0, 9), 9);
  assert.equal(readTarget(5, 9, 9), null, "sent already");
  assert.equal(readTarget(9, 0, 7), null, "behind the marker");
  assert.equal(readTarget(5, 7, 8), 8);
  assert.equal(readTarget(0, 0, 0), null, "an empty room");
  assert.equal(readTarget(0, 0, 1.5), null);
  assert.equal(readTarget(null, 0, 3), 3);
});

test("the title carries the unread mentions in front, and is itself again without them", () => {
  assert.equal(titleText("chat.ipynb - JupyterLab", 2), "(@2) chat.ipynb - JupyterLab");
  assert.equal(titleText("(@2) chat.ipynb - JupyterLab", 3), "(@3) chat.ipynb - JupyterLab", "replaced, not stacked");
  assert.equal(titleText("(@3) chat.ipynb - JupyterLab", 0), "chat.ipynb - JupyterLab");
  assert.equal(titleText("chat.ipynb", 0), "chat.ipynb");
  assert.equal(titleText("x", 150), "(@99+) x");
  assert.equal(titleText("(@99+) x", 0), "x");
  assert.equal(titleText("(draft) notes", 0), "(draft) notes", "a title of its own is left alone");
});

test("a notification of a mention: who and where, the body as one short line, tagged by room and seq", () => {
  const notice = mentionNotice("lab", message(12, ALICE, { body: "@bob\n\nlook  at   this" }), "Alice");
  assert.deepEqual(notice, { title: "Alice mentioned you in #lab", body: "@bob look at this", tag: "jce-mention:lab:12" });
  const long = mentionNotice("lab", message(1, ALICE, { body: "x".repeat(500) }), "A".repeat(300));
  assert.equal(long.body.length, 200);
  assert.equal(long.title.length, 120);
  assert.equal(mentionNotice("lab", message(1, ALICE, { body: undefined }), "A").body, "");
});
