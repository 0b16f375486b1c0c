// Your unread mentions across rooms, as plain state (no DOM, no network): filled from
// the server's `mentions` frame (after `hello`) and live `mention` frames, emptied by
// your read markers (`joined.read` and `read` frames), and kept current by changes to
// the messages (an edit that drops the mention, a deletion). See docs/protocol.md,
// "Mentions and read markers". Also how a body's mentions split into text and names.
//
// Every message here was written by someone else: it is checked before it is kept, and
// nothing in it is trusted beyond being shown as text.

const MAX_KEPT = 200; // unread mentions kept (the server sends at most 100 at connect)
// The server's pattern, `(?<![\w@])@([\w.\-]+)`, with Unicode letters and digits as \w.
const MENTION = /(?<![\p{L}\p{N}_@])@([\p{L}\p{N}_.-]+)/gu;

function isSeq(value) {
  return Number.isSafeInteger(value) && value > 0;
}

/** A fresh state: no mentions, no read markers known. */
export function newMentions() {
  return { entries: new Map(), markers: new Map(), generation: 0 };
}

function keyOf(room, seq) {
  return `${room}\n${seq}`; // room names have no control characters
}

/** Your read marker in `room` as known here (0: none known). */
export function markerOf(state, room) {
  return state.markers.get(room) || 0;
}

/** Whether `message` is a message of `room` that could be shown (seq, author, body). */
function wellFormed(room, message) {
  return (
    typeof room === "string" &&
    message !== null &&
    typeof message === "object" &&
    isSeq(message.seq) &&
    (message.room === undefined || message.room === room) &&
    message.user !== null &&
    typeof message.user === "object" &&
    typeof message.user.username === "string" &&
    (message.body === undefined || typeof message.body === "string")
  );
}

/** Whether `message` names `username` in its (server-stamped) `mentions`. */
export function mentionsUser(message, username) {
  return Boolean(message && Array.isArray(message.mentions) && message.mentions.includes(username));
}

function revOf(message) {
  return Number.isSafeInteger(message.rev) && message.rev > 0 ? message.rev : 0;
}

function tsOf(message) {
  return Number.isFinite(message.ts) ? message.ts : 0;
}

/** Keep at most MAX_KEPT mentions: the oldest go first. */
function bound(state) {
  if (state.entries.size <= MAX_KEPT) return;
  const oldest = [...state.entries.entries()].sort(([, a], [, b]) => tsOf(a.message) - tsOf(b.message) || a.seq - b.seq);
  for (const [key] of oldest.slice(0, state.entries.size - MAX_KEPT)) state.entries.delete(key);
}

/** A new connection: mentions from now on are live until its `mentions` list comes. */
export function startConnection(state) {
  state.generation += 1;
}

/**
 * A message in `room` that mentions `me`. Returns whether it was added (false: read
 * already, yours, deleted, malformed or known). A newer copy of a known one replaces it.
 */
export function addMention(state, room, message, me) {
  return add(state, room, message, me, state.generation);
}

/** addMention, the mention marked as of connection `generation` (-1: of the list after hello). */
function add(state, room, message, me, generation) {
  if (!wellFormed(room, message) || message.deleted) return false;
  if (message.user.username === me || message.seq <= markerOf(state, room)) return false;
  const key = keyOf(room, message.seq);
  const known = state.entries.get(key);
  if (known) {
    if (revOf(message) > revOf(known.message)) known.message = message;
    return false;
  }
  state.entries.set(key, { room, seq: message.seq, message, generation });
  bound(state);
  return true;
}

/**
 * The server's list of your unread mentions (sent after `hello`): it replaces those
 * known from earlier connections; those that came live on this one are kept.
 */
export function replaceMentions(state, messages, me) {
  for (const [key, entry] of state.entries) {
    if (entry.generation !== state.generation) state.entries.delete(key);
  }
  for (const message of Array.isArray(messages) ? messages : []) {
    if (message && typeof message === "object") add(state, message.room, message, me, -1);
  }
}

/**
 * Your read marker in `room` is at least `seq` (markers only move forward): the
 * mentions at or before it are read. Returns whether the marker moved.
 */
export function markRead(state, room, seq) {
  if (typeof room !== "string" || !Number.isSafeInteger(seq) || seq <= markerOf(state, room)) return false;
  state.markers.set(room, seq);
  for (const [key, entry] of state.entries) {
    if (entry.room === room && entry.seq <= seq) state.entries.delete(key);
  }
  return true;
}

/**
 * A message of `room` is now `message` (an edit, a deletion, a reaction): a mention
 * that is deleted or edited away is dropped, one an edit added is counted (not
 * notified), a kept one takes the newer copy. Returns whether the list changed.
 */
export function updateMessage(state, room, message, me) {
  if (!wellFormed(room, message)) return false;
  const key = keyOf(room, message.seq);
  const known = state.entries.get(key);
  if (!known) return mentionsUser(message, me) ? addMention(state, room, message, me) : false;
  if (revOf(message) < revOf(known.message)) return false;
  if (message.deleted || !mentionsUser(message, me)) {
    state.entries.delete(key);
    return true;
  }
  const changed = known.message !== message;
  known.message = message;
  return changed;
}

/** The unread mentions, newest first: `[{room, seq, message}]`. */
export function mentionList(state) {
  return [...state.entries.values()].sort((a, b) => tsOf(b.message) - tsOf(a.message) || b.seq - a.seq || a.room.localeCompare(b.room));
}

/** How many unread mentions there are (in `room`, or in all rooms). */
export function mentionCount(state, room = undefined) {
  if (room === undefined) return state.entries.size;
  let count = 0;
  for (const entry of state.entries.values()) if (entry.room === room) count += 1;
  return count;
}

/**
 * `text` split at the mentions of `mentioned` (a Set of usernames): strings, and
 * `{username}` where `@username` stands (trailing dots and hyphens are not part of a
 * name, as on the server). Text without such a mention comes back as `[text]`.
 */
export function mentionParts(text, mentioned) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(MENTION)) {
    const username = match[1].replace(/[.-]+$/, "");
    if (!mentioned.has(username)) continue;
    if (match.index > last) parts.push(text.slice(last, match.index));
    parts.push({ username });
    last = match.index + 1 + username.length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

/**
 * `message`'s body as plain text with its mentions (those in its `mentions`) as `@`
 * and the person's name, `labelOf(username)`: for the list and notifications.
 */
export function bodyWithNames(message, labelOf) {
  const mentioned = new Set(Array.isArray(message.mentions) ? message.mentions.filter((u) => typeof u === "string") : []);
  const body = typeof message.body === "string" ? message.body : "";
  if (mentioned.size === 0) return body;
  return mentionParts(body, mentioned)
    .map((part) => (typeof part === "string" ? part : `@${labelOf(part.username)}`))
    .join("");
}
