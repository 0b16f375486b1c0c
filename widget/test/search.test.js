import assert from "node:assert/strict";
import { test } from "node:test";

import { markedParts, searchable, searchFrame, searchResults } from "../src/search.js";

const marked = (parts) => parts.filter((p) => p.marked).map((p) => p.text);
const joined = (parts) => parts.map((p) => p.text).join("");

test("marks cut the body into plain and marked parts that join back to it", () => {
  const body = "Plotting the data now";
  const parts = markedParts(body, [[0, 8], [13, 17]]);
  assert.deepEqual(parts, [
    { text: "Plotting", marked: true },
    { text: " the ", marked: false },
    { text: "data", marked: true },
    { text: " now", marked: false },
  ]);
  assert.equal(joined(parts), body);
});

test("marks count code points, not UTF-16 units", () => {
  const body = "😀 café 𝒳 data";
  // code points: 😀=0, space=1, c=2..é=5, space=6, 𝒳=7, space=8, data=9..12
  const parts = markedParts(body, [[2, 6], [7, 8], [9, 13]]);
  assert.deepEqual(marked(parts), ["café", "𝒳", "data"]);
  assert.equal(joined(parts), body);
});

test("invalid marks are ignored, overlapping ones merge", () => {
  const body = "alpha beta";
  const bad = [[-1, 2], [3, 3], [5, 2], [0, 11], [1.5, 3], ["0", "2"], [0], null, "x", [0, 2, 4], [NaN, 1]];
  assert.deepEqual(markedParts(body, bad), [{ text: body, marked: false }]);
  assert.deepEqual(markedParts(body, "nope"), [{ text: body, marked: false }]);
  assert.deepEqual(marked(markedParts(body, [[6, 10], [0, 3], [2, 5]])), ["alpha", "beta"]);
  assert.equal(joined(markedParts(body, [[0, 10], [0, 10]])), body);
});

test("a body that is not a string shows as empty; markup stays text", () => {
  assert.deepEqual(markedParts(undefined, [[0, 1]]), [{ text: "", marked: false }]);
  const hostile = '<img src=x onerror="alert(1)">';
  const parts = markedParts(hostile, [[1, 4]]);
  assert.equal(joined(parts), hostile);
  assert.deepEqual(marked(parts), ["img"]);
});

test("results: malformed or deleted ones dropped, duplicates once, newest first", () => {
  const user = { username: "ann" };
  const answer = {
    results: [
      { room: "a", seq: 1, ts: 10, body: "old", user },
      { room: "b", seq: 2, ts: 30, body: "new", user },
      { room: "b", seq: 2, ts: 30, body: "new again", user },
      { room: "c", seq: 3, ts: 20, body: "mid", user },
      { room: "c", seq: 4, ts: 25, body: "", user, deleted: true },
      { room: "", seq: 5, ts: 1, body: "x", user },
      { room: "d", seq: 0, ts: 1, body: "x", user },
      { room: "d", seq: 6, ts: "1", body: "x", user },
      { room: "d", seq: 7, ts: 1, body: 3, user },
      { room: "d", seq: 8, ts: 1, body: "x", user: null },
      null,
      "x",
    ],
  };
  assert.deepEqual(
    searchResults(answer).map((r) => r.body),
    ["new", "mid", "old"],
  );
  assert.deepEqual(searchResults({}), []);
  assert.deepEqual(searchResults(null), []);
});

test("the search frame asks every readable room; only a query with words is sent", () => {
  assert.deepEqual(searchFrame("s1", "plot*"), { op: "search", id: "s1", query: "plot*", rooms: null, limit: 50 });
  assert.equal(searchFrame("s2", "x", 10).limit, 10);
  assert.ok(searchable("café"));
  assert.ok(searchable("数据"));
  assert.ok(!searchable("?!* "));
  assert.ok(!searchable("a".repeat(1001)));
});
