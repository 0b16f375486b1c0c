import assert from "node:assert/strict";
import { test } from "node:test";

import { cover, firstAtLeast, holesOf, isCovered, messagesIn, moreRequest, pageCoverage, rangeIndexOf } from "../src/segments.js";

const messages = (...seqs) => seqs.map((seq) => ({ seq }));

test("ranges merge when they touch or overlap, and stay apart across a hole", () => {
  let ranges = cover([], 100, 120);
  ranges = cover(ranges, 10, 20);
  assert.deepEqual(ranges, [[10, 20], [100, 120]]);
  assert.deepEqual(cover(ranges, 21, 30), [[10, 30], [100, 120]], "touching: one range");
  assert.deepEqual(cover(ranges, 15, 99), [[10, 120]], "a page that fills the hole joins both");
  assert.deepEqual(cover(ranges, 1, 200), [[1, 200]]);
  assert.deepEqual(cover(ranges, 50, 60), [[10, 20], [50, 60], [100, 120]]);
  assert.deepEqual(cover(ranges, 5, 2), ranges, "an empty range changes nothing");
  assert.deepEqual(holesOf([[10, 20], [50, 60], [100, 120]]), [[20, 50], [60, 100]]);
  assert.deepEqual(holesOf([[1, 120]]), []);
});

test("a seq is found in its range, and a range's messages are sliced out of them all", () => {
  const ranges = [[1, 20], [50, 60], [100, 120]];
  assert.deepEqual([0, 1, 20, 21, 49, 50, 60, 61, 120, 121].map((seq) => rangeIndexOf(ranges, seq)), [-1, 0, 0, -1, -1, 1, 1, -1, 2, -1]);
  assert.equal(isCovered(ranges, 55), true);
  assert.equal(isCovered(ranges, 70), false);
  const held = messages(3, 7, 20, 51, 55, 100, 118);
  assert.equal(firstAtLeast(held, 21), 3);
  assert.deepEqual(messagesIn(held, ranges[1]).map((m) => m.seq), [51, 55]);
  assert.deepEqual(messagesIn(held, ranges[0]).map((m) => m.seq), [3, 7, 20]);
  assert.deepEqual(messagesIn(held, undefined), []);
});

test("more of a segment: the page before it, or toward the next one after it", () => {
  const ranges = [[1, 20], [50, 60], [300, 400]];
  assert.equal(moreRequest(ranges, 0, "earlier", 100), null, "nothing before seq 1");
  assert.deepEqual(moreRequest(ranges, 1, "earlier", 100), { kind: "earlier", before: 50, limit: 100 });
  assert.deepEqual(moreRequest(ranges, 0, "later", 100), { kind: "later", before: 50, limit: 100 }, "a hole of one page: the page before the next segment");
  assert.deepEqual(moreRequest(ranges, 1, "later", 100), { kind: "later", around: 61, limit: 100 }, "a wider hole: the window after this one");
  assert.equal(moreRequest(ranges, 2, "later", 100), null, "nothing after the live segment");
  assert.equal(moreRequest(ranges, -1, "earlier", 100), null);
});

test("what a page before a seq covers: from its first message, or from the start when empty", () => {
  assert.deepEqual(pageCoverage({ before: 500, limit: 3 }, messages(480, 490, 499), 900), [480, 499]);
  assert.deepEqual(pageCoverage({ before: 500, limit: 3 }, [], 900), [1, 499]);
});

test("what a window around a seq covers: the room's start when short before, its end when short after", () => {
  const request = { around: 500, limit: 6 };
  // 3 before, 3 from it on: neither end
  assert.deepEqual(pageCoverage(request, messages(497, 498, 499, 500, 501, 502), 900), [497, 502]);
  // 1 before (fewer than 3): the start is in it
  assert.deepEqual(pageCoverage(request, messages(499, 500, 501, 502, 503, 504), 900), [1, 504]);
  // 2 after (fewer than 6 - 3): the end is in it, so it reaches the newest seen
  assert.deepEqual(pageCoverage(request, messages(497, 498, 499, 500, 501), 900), [497, 900]);
  // never past the newest seen: later ones come live
  assert.deepEqual(pageCoverage(request, messages(497, 498, 499, 500, 501, 950), 900), [497, 900]);
  // the target is not a message (a change entry): covered all the same
  assert.deepEqual(pageCoverage(request, messages(497, 498, 499, 501, 502, 503), 900), [497, 503]);
  assert.deepEqual(pageCoverage({ around: 5, limit: 1 }, messages(8), 900), [5, 8]);
  assert.deepEqual(pageCoverage({ around: 5, limit: 4 }, [], 900), [1, 900], "an empty room");
});
