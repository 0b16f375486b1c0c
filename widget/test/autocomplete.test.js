import assert from "node:assert/strict";
import { test } from "node:test";

import {
  autocompleteFor,
  autocompleteKey,
  filterCandidates,
  insertMention,
  isMentionable,
  mentionCandidates,
  mentionQuery,
} from "../src/autocomplete.js";

const ALICE = { username: "alice", display_name: "Alice Liddell" };
const BOB = { username: "bob", display_name: "Bob" };
const BOBBY = { username: "r.roberts", display_name: "Bobby Roberts" };
const CAROL = { username: "carol", display_name: "Carol" };
const message = (seq, user, fields = {}) => ({ seq, user, body: `m${seq}`, ...fields });
const names = (users) => users.map((u) => u.username);

test("a mention is being typed right after `@` at a word's start, up to the caret", () => {
  assert.deepEqual(mentionQuery("@", 1), { start: 0, query: "" });
  assert.deepEqual(mentionQuery("hi @bo", 6), { start: 3, query: "bo" });
  assert.deepEqual(mentionQuery("hi @bo and", 6), { start: 3, query: "bo" }, "only what is before the caret counts");
  assert.deepEqual(mentionQuery("(@r.rob", 7), { start: 1, query: "r.rob" });
  assert.deepEqual(mentionQuery("@Zoë", 4), { start: 0, query: "Zoë" });
  assert.equal(mentionQuery("mail me at a@bo", 15), null, "an address is not a mention");
  assert.equal(mentionQuery("@@bo", 4), null);
  assert.equal(mentionQuery("@bo ", 4), null, "a space ends it");
  assert.equal(mentionQuery("hi", 2), null);
  assert.equal(mentionQuery(`@${"x".repeat(65)}`, 66), null, "too long to be a name being typed");
});

test("the candidates are recent speakers (newest first), then the members, each once, never you", () => {
  const messages = [message(1, CAROL), message(2, BOB), message(3, ALICE), message(4, BOB)];
  const members = [CAROL, ALICE, BOBBY, BOB];
  assert.deepEqual(names(mentionCandidates(members, messages, "alice")), ["bob", "carol", "r.roberts"]);
  // a deleted message's author is not a recent speaker for that message
  const deleted = [message(1, CAROL, { deleted: true })];
  assert.deepEqual(names(mentionCandidates([BOB, CAROL], deleted, "alice")), ["bob", "carol"], "members by name");
});

test("only usernames a mention can name whole are proposed; users from frames are checked", () => {
  assert.ok(isMentionable("bob"));
  assert.ok(isMentionable("r.roberts"));
  assert.ok(isMentionable("zoë_2"));
  for (const bad of ["", "bob.", "-bob", "alice@example.com", "two words", "<img>", 42, null]) {
    assert.equal(isMentionable(bad), false, String(bad));
  }
  const odd = [{ username: "alice@example.com" }, null, "bob", { display_name: "no username" }, BOB];
  assert.deepEqual(names(mentionCandidates(odd, [], "me")), ["bob"]);
});

test("filtering: a username or name prefix first, then a word of the name, then anywhere", () => {
  const candidates = [CAROL, BOBBY, BOB, ALICE];
  assert.deepEqual(names(filterCandidates(candidates, "")), ["carol", "r.roberts", "bob", "alice"], "nothing typed: all, in order");
  assert.deepEqual(names(filterCandidates(candidates, "bo")), ["r.roberts", "bob"], "ties keep their order");
  assert.deepEqual(names(filterCandidates(candidates, "ROB")), ["r.roberts"], "case does not matter");
  assert.deepEqual(names(filterCandidates(candidates, "lid")), ["alice"], "a word of the name");
  assert.deepEqual(names(filterCandidates(candidates, "ol")), ["carol"], "anywhere, last");
  assert.deepEqual(names(filterCandidates([CAROL, { username: "olga" }], "ol")), ["olga", "carol"]);
  assert.deepEqual(filterCandidates(candidates, "zz"), []);
  assert.equal(filterCandidates(Array.from({ length: 20 }, (_, i) => ({ username: `u${i}` })), "u").length, 8);
});

test("the autocomplete opens on `@`, keeps the selected person while they match, and stays closed once dismissed", () => {
  const candidates = [CAROL, BOB, BOBBY];
  assert.equal(autocompleteFor("hello", 5, candidates), null);
  const open = autocompleteFor("hi @", 4, candidates);
  assert.deepEqual([open.start, open.query, names(open.items), open.index], [3, "", ["carol", "bob", "r.roberts"], 0]);
  const moved = autocompleteKey(open, "ArrowDown").state;
  assert.equal(moved.items[moved.index].username, "bob");
  const narrowed = autocompleteFor("hi @b", 5, candidates, { previous: moved });
  assert.deepEqual(names(narrowed.items), ["bob", "r.roberts"]);
  assert.equal(narrowed.items[narrowed.index].username, "bob", "still bob, now first");
  assert.equal(autocompleteFor("hi @zz", 6, candidates), null, "nobody matches: closed");
  assert.equal(autocompleteFor("hi @b", 5, candidates, { dismissed: 3 }), null, "Esc closed this one");
  assert.ok(autocompleteFor("hi @b @c", 8, candidates, { dismissed: 3 }), "a new mention opens again");
});

test("keys: arrows move round the list, Enter and Tab insert, Esc closes, other keys are the composer's", () => {
  const state = { start: 0, query: "", items: [CAROL, BOB, BOBBY], index: 0 };
  assert.equal(autocompleteKey(state, "ArrowUp").state.index, 2, "up from the first wraps to the last");
  assert.equal(autocompleteKey({ ...state, index: 2 }, "ArrowDown").state.index, 0);
  assert.equal(autocompleteKey(state, "ArrowDown").action, "move");
  assert.deepEqual(autocompleteKey({ ...state, index: 1 }, "Enter"), { state: { ...state, index: 1 }, action: "insert" });
  assert.equal(autocompleteKey(state, "Tab").action, "insert");
  assert.equal(autocompleteKey(state, "Escape").action, "close");
  assert.equal(autocompleteKey(state, "a").action, null);
  assert.equal(autocompleteKey(state, "ArrowLeft").action, null);
});

test("inserting replaces what was typed with `@username ` and puts the caret after it", () => {
  assert.deepEqual(insertMention("hi @b", 3, 5, "bob"), { text: "hi @bob ", caret: 8 });
  assert.deepEqual(insertMention("@ro, see this", 0, 3, "r.roberts"), { text: "@r.roberts , see this", caret: 11 });
  assert.deepEqual(insertMention("hi @b there", 3, 5, "bob"), { text: "hi @bob there", caret: 8 }, "no second space");
});
