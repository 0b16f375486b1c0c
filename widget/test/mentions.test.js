import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addMention,
  bodyWithNames,
  markRead,
  markerOf,
  mentionCount,
  mentionList,
  mentionParts,
  mentionsUser,
  newMentions,
  replaceMentions,
  startConnection,
  updateMessage,
} from "../src/mentions.js";

const ALICE = { username: "alice", display_name: "Alice" };
const BOB = { username: "bob", display_name: "Bob" };
const mention = (room, seq, fields = {}) => ({
  op: "message",
  room,
  seq,
  id: `m${seq}`,
  ts: 1000 + seq,
  user: ALICE,
  body: `@bob look at ${seq}`,
  mentions: ["bob"],
  ...fields,
});
const keys = (state) => mentionList(state).map((e) => `${e.room}:${e.seq}`);

test("live mentions are listed newest first, each once, and counted per room", () => {
  const state = newMentions();
  assert.equal(addMention(state, "lab", mention("lab", 3), "bob"), true);
  assert.equal(addMention(state, "general", mention("general", 9), "bob"), true);
  assert.equal(addMention(state, "lab", mention("lab", 5), "bob"), true);
  assert.equal(addMention(state, "lab", mention("lab", 5), "bob"), false, "the same one again (two frames of it)");
  assert.deepEqual(keys(state), ["general:9", "lab:5", "lab:3"]);
  assert.equal(mentionCount(state), 3);
  assert.equal(mentionCount(state, "lab"), 2);
  assert.equal(mentionCount(state, "random"), 0);
});

test("a read marker reads every mention at or before it, in its room only, and never moves back", () => {
  const state = newMentions();
  for (const seq of [3, 5, 8]) addMention(state, "lab", mention("lab", seq), "bob");
  addMention(state, "general", mention("general", 4), "bob");
  assert.equal(markRead(state, "lab", 5), true);
  assert.deepEqual(keys(state), ["lab:8", "general:4"]);
  assert.equal(markRead(state, "lab", 4), false, "backwards: ignored");
  assert.equal(markerOf(state, "lab"), 5);
  assert.equal(addMention(state, "lab", mention("lab", 5), "bob"), false, "at the marker: read already");
  assert.equal(addMention(state, "lab", mention("lab", 9), "bob"), true);
  assert.equal(markRead(state, "lab", 1e300), false, "not a seq");
  assert.equal(markRead(state, 7, 10), false, "not a room");
});

test("mentions that are yours, deleted or malformed are not listed", () => {
  const state = newMentions();
  assert.equal(addMention(state, "lab", mention("lab", 1, { user: BOB }), "bob"), false, "you mentioned yourself");
  assert.equal(addMention(state, "lab", mention("lab", 2, { deleted: true, body: "" }), "bob"), false);
  const malformed = [
    null,
    "text",
    mention("lab", 0),
    mention("lab", 2.5),
    mention("lab", 3, { room: "elsewhere" }),
    mention("lab", 4, { user: null }),
    mention("lab", 5, { user: { username: 7 } }),
    mention("lab", 6, { body: { html: "<b>" } }),
  ];
  for (const message of malformed) assert.equal(addMention(state, "lab", message, "bob"), false, JSON.stringify(message));
  assert.equal(addMention(state, null, mention("lab", 7), "bob"), false, "no room");
  assert.equal(mentionCount(state), 0);
});

test("the list after hello replaces the last connection's; mentions live on this one are kept", () => {
  const state = newMentions();
  startConnection(state);
  addMention(state, "lab", mention("lab", 3), "bob");
  addMention(state, "lab", mention("lab", 4), "bob");
  startConnection(state); // a reconnect: lab:4 was read meanwhile elsewhere
  addMention(state, "general", mention("general", 7), "bob"); // came before the list
  replaceMentions(state, [mention("lab", 3), mention("random", 2), { bogus: true }, null], "bob");
  assert.deepEqual(keys(state), ["general:7", "lab:3", "random:2"]);
  replaceMentions(state, "not a list", "bob");
  assert.deepEqual(keys(state), ["general:7"], "the server says none; only the live one stays");
});

test("a known marker applies to the list after hello", () => {
  const state = newMentions();
  markRead(state, "lab", 10);
  replaceMentions(state, [mention("lab", 9), mention("lab", 11)], "bob");
  assert.deepEqual(keys(state), ["lab:11"]);
});

test("edits and deletions: a mention edited away or deleted goes; one an edit adds is counted; older copies change nothing", () => {
  const state = newMentions();
  addMention(state, "lab", mention("lab", 3), "bob");
  assert.equal(updateMessage(state, "lab", mention("lab", 3, { body: "@bob, look", rev: 5 }), "bob"), true);
  assert.equal(mentionList(state)[0].message.body, "@bob, look");
  assert.equal(updateMessage(state, "lab", mention("lab", 3, { body: "old", rev: 4, mentions: [] }), "bob"), false, "older");
  assert.equal(updateMessage(state, "lab", mention("lab", 3, { body: "never mind", rev: 6, mentions: [] }), "bob"), true);
  assert.equal(mentionCount(state), 0);
  assert.equal(updateMessage(state, "lab", mention("lab", 4, { rev: 7 }), "bob"), true, "an edit that mentions bob");
  assert.equal(updateMessage(state, "lab", mention("lab", 4, { rev: 8, deleted: true, body: "", mentions: [] }), "bob"), true);
  assert.equal(mentionCount(state), 0);
  assert.equal(updateMessage(state, "lab", mention("lab", 5, { mentions: ["carol"] }), "bob"), false, "not about bob");
  markRead(state, "lab", 9);
  assert.equal(updateMessage(state, "lab", mention("lab", 6, { rev: 10 }), "bob"), false, "a reaction to a mention read already");
});

test("no more than 200 mentions are kept: the oldest go", () => {
  const state = newMentions();
  for (let seq = 1; seq <= 250; seq += 1) addMention(state, "lab", mention("lab", seq), "bob");
  assert.equal(mentionCount(state), 200);
  assert.deepEqual([mentionList(state).at(-1).seq, mentionList(state)[0].seq], [51, 250]);
});

test("mentionsUser reads the server's list only", () => {
  assert.ok(mentionsUser({ mentions: ["bob"] }, "bob"));
  assert.ok(!mentionsUser({ body: "@bob", mentions: [] }, "bob"));
  assert.ok(!mentionsUser({ body: "@bob", mentions: "bob" }, "bob"));
  assert.ok(!mentionsUser(null, "bob"));
});

test("a body's text splits at the mentions the server found, as it reads them", () => {
  const bob = new Set(["bob", "r.roberts"]);
  assert.deepEqual(mentionParts("hi @bob!", bob), ["hi ", { username: "bob" }, "!"]);
  assert.deepEqual(mentionParts("@bob.", bob), [{ username: "bob" }, "."], "a trailing dot is not the name's");
  assert.deepEqual(mentionParts("ask @r.roberts-", bob), ["ask ", { username: "r.roberts" }, "-"]);
  assert.deepEqual(mentionParts("@bobby and @carol", bob), ["@bobby and @carol"], "other names stay text");
  assert.deepEqual(mentionParts("mail a@bob or @@bob", bob), ["mail a@bob or @@bob"], "not mentions on the server either");
  assert.deepEqual(mentionParts("@bob @bob", bob), [{ username: "bob" }, " ", { username: "bob" }]);
  assert.deepEqual(mentionParts("(@bob)", bob), ["(", { username: "bob" }, ")"]);
  assert.deepEqual(mentionParts("", bob), []);
});

test("a body as text for the list and notifications: its mentions as names, nothing else changed", () => {
  const labelOf = (username) => ({ bob: "Bob", carol: "<b>Carol</b>" })[username] || username;
  assert.equal(bodyWithNames({ body: "@bob and @carol, not @dave", mentions: ["bob", "carol"] }, labelOf), "@Bob and @<b>Carol</b>, not @dave");
  assert.equal(bodyWithNames({ body: "@bob", mentions: [] }, labelOf), "@bob");
  assert.equal(bodyWithNames({ body: { x: 1 }, mentions: ["bob"] }, labelOf), "");
  assert.equal(bodyWithNames({ body: "@bob", mentions: "bob" }, labelOf), "@bob");
});
