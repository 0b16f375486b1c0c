import assert from "node:assert/strict";
import { test } from "node:test";

import { labelsFor, memberText, nameOf } from "../src/names.js";

test("display names fall back to name, then username", () => {
  assert.equal(nameOf({ username: "u1", display_name: "Ann" }), "Ann");
  assert.equal(nameOf({ username: "u1", name: "ann" }), "ann");
  assert.equal(nameOf({ username: "u1" }), "u1");
});

test("two people with one display name are told apart by username", () => {
  const labels = labelsFor([
    { username: "alice", display_name: "Alice" },
    { username: "mallory", display_name: "alice " },
    { username: "bob", display_name: "Bob" },
  ]);
  assert.equal(labels.get("alice"), "Alice (alice)");
  assert.equal(labels.get("mallory"), "alice  (mallory)");
  assert.equal(labels.get("bob"), "Bob");
});

test("a kernel-only member says so", () => {
  assert.equal(memberText("Ann", { username: "a", kernel: true }, false), "Ann's kernel");
  assert.equal(memberText("Ann", { username: "a" }, true), "Ann (you)");
});
