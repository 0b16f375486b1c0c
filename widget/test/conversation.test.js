import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addMessage,
  applyChange,
  applyGap,
  displayed,
  excerpt,
  hasReacted,
  lastOwnMessage,
  mergePage,
  messageAt,
  newConversation,
  reactionList,
  repliesTo,
  resetMessages,
} from "../src/conversation.js";

const ALICE = { username: "alice", display_name: "Alice" };
const BOB = { username: "bob", display_name: "Bob" };

const message = (seq, fields = {}) => ({
  op: "message",
  room: "r",
  seq,
  id: `m${seq}`,
  ts: 1000 + seq,
  user: ALICE,
  body: `message ${seq}`,
  ...fields,
});

/** A change entry `seq` whose target is now `now` (the message with the change applied). */
const change = (seq, kind, now, fields = {}) => ({
  op: "change",
  room: "r",
  seq,
  id: `c${seq}`,
  ts: 2000 + seq,
  user: BOB,
  kind,
  target: now.seq,
  message: { ...now, rev: seq },
  ...fields,
});

/** A state holding messages `seqs` (and having seen entries up to the last). */
function holding(...seqs) {
  const state = newConversation();
  for (const seq of seqs) addMessage(state, message(seq));
  return state;
}

const bodies = (state) => state.messages.map((m) => m.body);

test("a message seen already (a replay, a duplicate delivery) is not added again", () => {
  const state = holding(1, 2);
  assert.equal(addMessage(state, message(2)).added, null);
  assert.equal(addMessage(state, message(1)).added, null);
  assert.equal(addMessage(state, message(3)).added.seq, 3);
  assert.deepEqual(state.messages.map((m) => m.seq), [1, 2, 3]);
});

test("a change replaces the held copy, and the log position advances past it", () => {
  const state = holding(1, 2);
  const edited = change(3, "edit", message(2, { body: "new words", edited: 2003 }));
  const copy = applyChange(state, edited);
  assert.equal(copy.body, "new words");
  assert.equal(copy.rev, 3);
  assert.equal(state.seq, 3);
  assert.deepEqual(bodies(state), ["message 1", "new words"]);
  // a message after a change is added; one at or below the change's seq is a duplicate
  assert.equal(addMessage(state, message(3)).added, null);
  assert.ok(addMessage(state, message(4)).added);
});

test("replaying changes is idempotent: the same state, nothing reported as changed", () => {
  const state = holding(1, 2);
  const entries = [
    change(3, "react", message(1, { reactions: { "👍": ["bob"] } })),
    change(4, "edit", message(1, { body: "edited", edited: 2004, reactions: { "👍": ["bob"] } })),
    change(5, "unreact", message(1, { body: "edited", edited: 2004 })),
  ];
  for (const entry of entries) assert.ok(applyChange(state, entry));
  const once = JSON.stringify(state.messages);
  for (const entry of entries) assert.equal(applyChange(state, entry), null);
  assert.equal(JSON.stringify(state.messages), once);
  assert.equal(messageAt(state, 1).body, "edited");
  assert.deepEqual(reactionList(messageAt(state, 1).reactions), []);
});

test("an older change never overwrites a newer copy (ordering by rev)", () => {
  const state = holding(1);
  const react = change(2, "react", message(1, { reactions: { "🎉": ["bob"] } }));
  const edit = change(3, "edit", message(1, { body: "v2", edited: 2003, reactions: { "🎉": ["bob"] } }));
  assert.ok(applyChange(state, edit));
  assert.equal(applyChange(state, react), null, "rev 2 is older than the copy's rev 3");
  assert.equal(messageAt(state, 1).body, "v2");
  assert.equal(messageAt(state, 1).rev, 3);
  // a replayed change carries the target as it is now (rev 3): equal rev is taken
  const replay = change(2, "react", message(1, { body: "v2", edited: 2003, reactions: { "🎉": ["bob"] } }));
  replay.message.rev = 3;
  assert.equal(applyChange(state, replay), null, "the same copy: nothing changed");
});

test("a change to a message not held adds nothing", () => {
  const state = holding(5, 6);
  const copy = applyChange(state, change(7, "edit", message(2, { body: "far back" })));
  assert.equal(copy, null);
  assert.deepEqual(state.messages.map((m) => m.seq), [5, 6]);
  assert.equal(messageAt(state, 2), null);
  assert.equal(state.seq, 7);
});

test("a change whose message is not its target is ignored", () => {
  const state = holding(1, 2);
  const bad = change(3, "edit", message(2, { body: "mismatch" }), { target: 1 });
  assert.equal(applyChange(state, bad), null);
  assert.deepEqual(bodies(state), ["message 1", "message 2"]);
});

test("a deleted message has no body, and no later copy brings it back", () => {
  const state = holding(1, 2);
  const deletion = change(3, "delete", message(2, { deleted: true, body: "" }));
  assert.equal(applyChange(state, deletion).deleted, true);
  assert.equal(messageAt(state, 2).body, "");
  // a (wrong) copy with the body, even newer, does not resurrect it
  applyChange(state, change(4, "edit", message(2, { body: "secret", deleted: false })));
  assert.equal(messageAt(state, 2).deleted, true);
  assert.equal(messageAt(state, 2).body, "");
  // nor does a fresh history holding an old copy
  resetMessages(state, [message(1), message(2, { body: "secret" })], 4, true);
  assert.equal(messageAt(state, 2).body, "");
  assert.equal(messageAt(state, 2).deleted, true);
  // a new log (another epoch): seq 2 is another message
  resetMessages(state, [message(1), message(2, { body: "another" })], 2, false);
  assert.equal(messageAt(state, 2).body, "another");
  // a deleted message sent with a body (a broken server) is shown without it
  const other = newConversation();
  addMessage(other, message(1, { deleted: true, body: "leaked" }));
  assert.equal(messageAt(other, 1).body, "");
  assert.equal(displayed(messageAt(other, 1), [{ op: "edit", seq: 1, body: "x" }], "alice").body, "");
});

test("a reply sets its held parent's reply count when newer than the parent's copy", () => {
  const state = holding(1, 2);
  const reply = message(3, { user: BOB, reply_to: 1, parent_replies: 1 });
  const { added, changed } = addMessage(state, reply);
  assert.equal(added.seq, 3);
  assert.deepEqual(changed.map((m) => [m.seq, m.replies, m.rev]), [[1, 1, 3]]);
  assert.equal(messageAt(state, 1).replies, 1);
  // a change to the parent made before this reply (rev 2, replayed late) loses
  assert.equal(applyChange(state, change(2, "react", message(1, { reactions: { "👀": ["bob"] } }))), null);
  assert.equal(messageAt(state, 1).replies, 1);
  // the next reply counts on
  addMessage(state, message(4, { reply_to: 1, parent_replies: 2 }));
  assert.equal(messageAt(state, 1).replies, 2);
  assert.deepEqual(repliesTo(state, 1).map((m) => m.seq), [3, 4]);
});

test("a page of earlier messages gets the changes that came while they were not held", () => {
  const state = holding(10, 11);
  // message 4 is edited, message 5 gets a reply, while neither is held
  applyChange(state, change(12, "edit", message(4, { body: "edited while away", edited: 2012 })));
  addMessage(state, message(13, { reply_to: 5, parent_replies: 3 }));
  applyChange(state, change(14, "delete", message(6, { deleted: true, body: "" })));
  // the page was read before those changes (its copies are older)
  const page = [message(4), message(5, { replies: 2, rev: 9 }), message(6), message(10), message(11)];
  const { added, changed } = mergePage(state, page);
  assert.deepEqual(added.map((m) => m.seq), [4, 5, 6], "only what is not held");
  assert.deepEqual(changed, []);
  assert.equal(messageAt(state, 4).body, "edited while away");
  assert.equal(messageAt(state, 5).replies, 3);
  assert.equal(messageAt(state, 6).deleted, true);
  assert.equal(messageAt(state, 6).body, "");
  // a page read after them (newer copies) is kept as it is
  const fresh = holding(20);
  applyChange(fresh, change(21, "edit", message(3, { body: "edit 21" })));
  const newer = mergePage(fresh, [message(3, { body: "edit 25", rev: 25 })]).added;
  assert.equal(newer[0].body, "edit 25");
});

test("a page fills a hole where its seqs go, keeps newer held copies and leaves the future to come live", () => {
  const state = holding(1, 2, 50, 51);
  applyChange(state, change(52, "react", message(2, { reactions: { "👍": ["bob"] } })));
  const page = [
    message(30),
    message(2), // held, and its copy here is older than the reaction
    message(31, { reply_to: 1, parent_replies: 1 }),
    message(30), // twice in one page
    message(60), // past the last entry seen: it comes as a `message`
  ];
  const { added, changed } = mergePage(state, page);
  assert.deepEqual(added.map((m) => m.seq), [30, 31]);
  assert.deepEqual(state.messages.map((m) => m.seq), [1, 2, 30, 31, 50, 51]);
  assert.deepEqual(changed.map((m) => [m.seq, m.replies]), [[1, 1]], "the parent counts the reply");
  assert.deepEqual(messageAt(state, 2).reactions, { "👍": ["bob"] }, "the newer held copy stays");
  // a copy newer than the one held replaces it
  const again = mergePage(state, [message(50, { body: "edited", rev: 52 })]);
  assert.deepEqual([again.added, again.changed.map((m) => m.body)], [[], ["edited"]]);
  assert.deepEqual(mergePage(state, [message(50, { body: "edited", rev: 52 })]), { added: [], changed: [] });
});

test("a recovered gap adds its messages and applies its changes, whatever their order", () => {
  const state = holding(1, 2);
  const history = [
    message(4, { body: "added, then edited", edited: 2005, rev: 5 }),
    message(6, { reply_to: 1, parent_replies: 1 }),
  ];
  const changes = [
    change(3, "react", message(2, { reactions: { "🚀": ["bob"] } })),
    change(5, "edit", message(4, { body: "added, then edited", edited: 2005 })),
  ];
  const gap = applyGap(state, history, changes);
  assert.deepEqual(gap.added.map((m) => m.seq), [4, 6]);
  assert.deepEqual(gap.changed.map((m) => m.seq), [1, 2]);
  assert.equal(messageAt(state, 1).replies, 1);
  assert.deepEqual(messageAt(state, 2).reactions, { "🚀": ["bob"] });
  assert.equal(state.seq, 6);
  // the same gap again (a resumed join answered twice) changes nothing
  const before = JSON.stringify(state.messages);
  const again = applyGap(state, history, changes);
  assert.deepEqual([again.added, again.changed], [[], []]);
  assert.equal(JSON.stringify(state.messages), before);
});

test("pending edits, deletions and reaction toggles show until acknowledged", () => {
  const copy = message(1, { reactions: { "👍": ["bob", "alice"], "🎉": ["bob"] } });
  const shown = displayed(
    copy,
    [
      { op: "edit", seq: 1, body: "fixed typo" },
      { op: "unreact", seq: 1, emoji: "👍" },
      { op: "react", seq: 1, emoji: "🎉" },
      { op: "react", seq: 1, emoji: "✅" },
    ],
    "alice",
  );
  assert.equal(shown.body, "fixed typo");
  assert.ok(shown.saving);
  assert.deepEqual(shown.reactions, [["👍", ["bob"]], ["🎉", ["bob", "alice"]], ["✅", ["alice"]]]);
  assert.ok(hasReacted(shown, "🎉", "alice") && !hasReacted(shown, "👍", "alice"));
  assert.deepEqual([...shown.reacting], ["👍", "🎉", "✅"]);
  // react then unreact: back to nothing
  const toggled = displayed(message(2), [{ op: "react", seq: 2, emoji: "👀" }, { op: "unreact", seq: 2, emoji: "👀" }], "alice");
  assert.deepEqual(toggled.reactions, []);
  assert.ok(displayed(message(3), [{ op: "delete", seq: 3 }], "alice").deleting);
  assert.equal(displayed(copy, [], "alice").body, "message 1");
});

test("reactions from the wire are read defensively", () => {
  assert.deepEqual(reactionList(null), []);
  assert.deepEqual(reactionList(["👍"]), []);
  assert.deepEqual(reactionList({ "👍": "bob", "👀": [], "🎉": ["bob", "bob", 7, "carol"] }), [["🎉", ["bob", "carol"]]]);
});

test("Up arrow's message is your last one not deleted; quotes are one short line", () => {
  const state = holding(1);
  addMessage(state, message(2, { user: BOB }));
  addMessage(state, message(3));
  applyChange(state, change(4, "delete", message(3, { deleted: true, body: "" })));
  assert.equal(lastOwnMessage(state, "alice").seq, 1);
  assert.equal(lastOwnMessage(state, "bob").seq, 2);
  assert.equal(lastOwnMessage(state, "carol"), null);
  assert.equal(excerpt("a\n\n  b", 80), "a b");
  assert.equal(excerpt("x".repeat(100), 10), `${"x".repeat(9)}…`);
});
