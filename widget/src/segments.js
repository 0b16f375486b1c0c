// Which parts of a room's log this browser holds, as plain rules (no DOM, no network).
// Opening a room at an old message (a search result, a mention, a reply's parent) loads
// the messages around it in one `history {around}` request instead of every page in
// between, so a room's messages may have holes: they form one or more segments, the
// newest one live (it grows as messages arrive) and older islands.
//
// A segment is a range `[lo, hi]` of seqs whose messages are all held (a seq that is a
// change entry, not a message, is held by being known not to be one). `ranges` is sorted,
// and two ranges that touch are one. The live range always ends at the room's `seq`, the
// last log entry seen. Between ranges are holes whose messages may be missing. See
// docs/protocol.md, "history" for what a page tells: a page is consecutive messages of
// the log, and one shorter than asked reaches the room's beginning or end.

/** The index of the range holding `seq`, or -1. */
export function rangeIndexOf(ranges, seq) {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [from, to] = ranges[mid];
    if (seq < from) hi = mid - 1;
    else if (seq > to) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Whether `seq` is in a range held (its message, if it is one, is held). */
export function isCovered(ranges, seq) {
  return rangeIndexOf(ranges, seq) >= 0;
}

/** `ranges` with `[lo, hi]` added: sorted, the ranges it touches or overlaps merged into one. */
export function cover(ranges, lo, hi) {
  if (!(Number.isSafeInteger(lo) && Number.isSafeInteger(hi)) || hi < lo) return ranges;
  const result = [];
  let merged = [lo, hi];
  let placed = false;
  for (const range of ranges) {
    if (range[1] + 1 < merged[0]) result.push(range);
    else if (merged[1] + 1 < range[0]) {
      if (!placed) result.push(merged);
      placed = true;
      result.push(range);
    } else merged = [Math.min(merged[0], range[0]), Math.max(merged[1], range[1])];
  }
  if (!placed) result.push(merged);
  return result;
}

/** The holes between ranges, as `[after, before]`: the messages with after < seq < before may be missing. */
export function holesOf(ranges) {
  const holes = [];
  for (let i = 1; i < ranges.length; i += 1) holes.push([ranges[i - 1][1], ranges[i][0]]);
  return holes;
}

/** The index of the first of `messages` (sorted by seq) at `seq` or after it. */
export function firstAtLeast(messages, seq) {
  let lo = 0;
  let hi = messages.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (messages[mid].seq < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The messages of range `[lo, hi]` among `messages` (sorted by seq). */
export function messagesIn(messages, range) {
  if (!range) return [];
  return messages.slice(firstAtLeast(messages, range[0]), firstAtLeast(messages, range[1] + 1));
}

/**
 * The request that loads more of the range at `index`, as the fields of a `history`
 * frame (`kind` says which way), or null when there is nothing there to load.
 * `"earlier"`: the page before its first message (none before seq 1). `"later"`: the
 * messages after its last one, toward the next range (none after the live one). A gap
 * of at most `limit` seqs is one page before the next range; a wider one is a window
 * `around` the seq after the range, whose newest part is new (the protocol has no
 * "after" page: the older half of that window is messages held already).
 */
export function moreRequest(ranges, index, kind, limit) {
  const range = ranges[index];
  if (!range) return null;
  if (kind === "earlier") return range[0] > 1 ? { kind, before: range[0], limit } : null;
  const next = ranges[index + 1];
  if (!next) return null;
  if (next[0] - range[1] - 1 <= limit) return { kind, before: next[0], limit };
  return { kind, around: range[1] + 1, limit };
}

/**
 * What an answer to `request` (a history frame's fields: `before` or `around`, and
 * `limit`, the limit the server applied) covers, given its `messages` (sorted by seq)
 * and `seq`, the last entry seen live: `[lo, hi]`. A `before` page covers from its first
 * message (from 1 when it is empty: the beginning) to `before - 1`. An `around` window
 * covers from its first message (from 1 when it has fewer than `limit // 2` before the
 * target) to its last (to `seq` when it has fewer after than it could: the room's end,
 * so it joins the live range). Never past `seq`: newer messages come live.
 */
export function pageCoverage(request, messages, seq) {
  if (Number.isSafeInteger(request.before)) {
    const lo = messages.length ? messages[0].seq : 1;
    return [lo, Math.min(request.before - 1, seq)];
  }
  const target = request.around;
  const before = messages.filter((m) => m.seq < target).length;
  const after = messages.length - before;
  let lo = messages.length ? messages[0].seq : target;
  if (before < Math.floor(request.limit / 2)) lo = 1;
  const atEnd = after < request.limit - before;
  const hi = atEnd ? seq : Math.min(messages.at(-1).seq, seq);
  // The target is covered whatever came (a window that lacks it: it is not a message).
  return [Math.min(lo, target), Math.max(hi, Math.min(target, seq))];
}
