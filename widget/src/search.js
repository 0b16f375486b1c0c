// Search (#15, item 6): the `search` frame, its results as the widget lists them, and a
// result's body cut into plain and marked parts from the server's `marks` (spans in
// Unicode code points: indexes of `Array.from(body)`). No DOM and no network here;
// view.js turns the parts into text nodes and <mark> elements. Everything in a result
// is someone else's: anything malformed is dropped, never trusted.

export const SEARCH_LIMIT = 50;
export const MAX_QUERY_LENGTH = 1000;

/** The `search` frame for `query` over every room you may read (`rooms: null`). */
export function searchFrame(id, query, limit = SEARCH_LIMIT) {
  return { op: "search", id, query, rooms: null, limit };
}

/** Whether `query` is worth sending: some letter or digit, and not too long. */
export function searchable(query) {
  return typeof query === "string" && query.length <= MAX_QUERY_LENGTH && /[\p{L}\p{N}]/u.test(query);
}

function validSpans(marks, length) {
  if (!Array.isArray(marks)) return [];
  const spans = [];
  for (const mark of marks) {
    if (!Array.isArray(mark) || mark.length !== 2) continue;
    const [start, end] = mark;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) continue;
    if (start < 0 || end <= start || end > length) continue;
    spans.push([start, end]);
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  // Overlapping or touching spans make one mark.
  const merged = [];
  for (const span of spans) {
    const last = merged.at(-1);
    if (last && span[0] <= last[1]) last[1] = Math.max(last[1], span[1]);
    else merged.push([...span]);
  }
  return merged;
}

/**
 * `body` cut at `marks` (`[start, end)` spans in code points): a list of
 * `{text, marked}`, in order, whose texts join to `body`. Spans that are not pairs of
 * integers within the body, or are empty, are ignored; overlapping ones merge.
 */
export function markedParts(body, marks) {
  const text = typeof body === "string" ? body : "";
  const chars = Array.from(text);
  const parts = [];
  let at = 0;
  for (const [start, end] of validSpans(marks, chars.length)) {
    if (start > at) parts.push({ text: chars.slice(at, start).join(""), marked: false });
    parts.push({ text: chars.slice(start, end).join(""), marked: true });
    at = end;
  }
  if (at < chars.length || parts.length === 0) parts.push({ text: chars.slice(at).join(""), marked: false });
  return parts;
}

function validResult(result) {
  return (
    result !== null &&
    typeof result === "object" &&
    typeof result.room === "string" &&
    result.room !== "" &&
    Number.isSafeInteger(result.seq) &&
    result.seq > 0 &&
    typeof result.body === "string" &&
    Number.isFinite(result.ts) &&
    result.user !== null &&
    typeof result.user === "object" &&
    typeof result.user.username === "string"
  );
}

/**
 * The results of a `search` answer as the widget lists them: well-formed ones only,
 * once each (by room and seq), newest first (by `ts`; the server's order among equals).
 */
export function searchResults(answer) {
  const results = answer && Array.isArray(answer.results) ? answer.results : [];
  const seen = new Set();
  const kept = [];
  for (const result of results) {
    if (!validResult(result) || result.deleted === true) continue;
    const key = `${result.seq}\u0000${result.room}`;
    if (seen.has(key)) continue;
    seen.add(key);
    kept.push(result);
  }
  return kept.map((r, i) => [r, i]).sort(([a, i], [b, j]) => b.ts - a.ts || i - j).map(([r]) => r);
}
