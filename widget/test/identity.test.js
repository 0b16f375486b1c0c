import assert from "node:assert/strict";
import { test } from "node:test";

import { checkDisplayName, initialsFor, setDisplayName } from "../src/identity.js";

test("a display name is trimmed and checked", () => {
  assert.equal(checkDisplayName("  Ann Lee "), "Ann Lee");
  assert.throws(() => checkDisplayName("   "), /Type a name/);
  assert.throws(() => checkDisplayName("x".repeat(101)), /at most 100/);
  assert.throws(() => checkDisplayName("a\u0000b"), /control characters/);
});

test("initials come from the first two words", () => {
  assert.equal(initialsFor("ann lee smith"), "AL");
  assert.equal(initialsFor("Ωmega"), "Ω");
});

test("the rename is a PATCH of api/me with the XSRF token", async () => {
  const calls = [];
  const fetchImpl = async (url, options) => {
    calls.push({ url, options });
    return { ok: true, status: 200 };
  };
  const name = await setDisplayName(" Ann ", { baseUrl: "/user/a", xsrf: "x1", token: "t", fetchImpl });
  assert.equal(name, "Ann");
  assert.equal(calls[0].url, "/user/a/api/me");
  assert.equal(calls[0].options.method, "PATCH");
  assert.equal(calls[0].options.headers["X-XSRFToken"], "x1");
  assert.deepEqual(JSON.parse(calls[0].options.body), { display_name: "Ann", initials: "A" });
});

test("a server that forbids renames gets advice, not a status code alone", async () => {
  const fetchImpl = async () => ({ ok: false, status: 400 });
  await assert.rejects(setDisplayName("Ann", { fetchImpl }), /updatable_fields/);
  const down = async () => {
    throw new TypeError("Failed to fetch");
  };
  await assert.rejects(setDisplayName("Ann", { fetchImpl: down }), /try again/);
});
