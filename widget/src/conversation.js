// A room's conversation as this browser holds it: messages in seq order, each with every
// change (edit, deletion, reactions, reply count) applied, following the rules of
// docs/protocol.md ("Conversation changes"). No DOM and no network here: connection.js
// feeds frames in, view.js draws what comes out.
//
// The state is a plain object (a RoomState): `messages` (sorted by seq, no duplicates),
// `seq` (the last log entry seen, message or change), `late` (changes to messages not
// held, kept in case a page of history computed before them arrives after them) and
// `deleted` (the seqs known deleted: a copy that says otherwise never brings a body back).
// Every function is idempotent: applying the same frame twice changes nothing more.

/** The reactions the picker offers. */
export const COMMON_EMOJI = ["👍", "❤️", "😄", "🎉", "👀", "🚀", "✅", "❌"];

const LATE_MAX = 1000; // messages not held whose later changes are remembered

/** A fresh conversation state (RoomState carries the same fields). */
export function newConversation() {
  return { messages: [], seq: 0, late: new Map(), deleted: new Set() };
}

/** The `rev` of a message copy: the seq of the last entry that changed it (0: none). */
export function revOf(message) {
  const rev = message && message.rev;
  return Number.isSafeInteger(rev) && rev > 0 ? rev : 0;
}

function isSeq(value) {
  return Number.isSafeInteger(value) && value > 0;
}

/** The index of message `seq` in `messages` (sorted by seq), or -1. */
export function indexOfSeq(messages, seq) {
  let lo = 0;
  let hi = messages.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const at = messages[mid].seq;
    if (at === seq) return mid;
    if (at < seq) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** Message `seq` if it is held, else null. */
export function messageAt(state, seq) {
  const index = indexOfSeq(state.messages, seq);
  return index < 0 ? null : state.messages[index];
}

/** `message` as it may be kept: a deleted one (or one known deleted) has no body. */
function settle(state, message) {
  if (message.deleted) state.deleted.add(message.seq);
  if (!state.deleted.has(message.seq)) return message;
  if (message.deleted === true && message.body === "") return message;
  return { ...message, deleted: true, body: "" };
}

function sameCopy(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function remember(state, seq, update) {
  const entry = state.late.get(seq) || {};
  state.late.delete(seq); // re-inserted last: the oldest entries are dropped first
  if (update.message && (!entry.message || revOf(update.message) >= revOf(entry.message))) {
    entry.message = update.message;
  }
  if (update.replies && (!entry.replies || update.replies.rev > entry.replies.rev)) {
    entry.replies = update.replies;
  }
  state.late.set(seq, entry);
  while (state.late.size > LATE_MAX) state.late.delete(state.late.keys().next().value);
}

/** Set a parent's reply count from a reply, if the reply is newer than the parent's copy. */
function withReplies(parent, replies) {
  if (replies.rev <= revOf(parent)) return parent;
  return { ...parent, replies: replies.count, rev: replies.rev };
}

/** A copy just loaded, with the changes that came while it was not held applied. */
function withLate(state, message) {
  const entry = state.late.get(message.seq);
  let copy = message;
  if (entry) {
    if (entry.message && revOf(entry.message) >= revOf(copy)) copy = entry.message;
    if (entry.replies) copy = withReplies(copy, entry.replies);
    state.late.delete(message.seq);
  }
  return settle(state, copy);
}

/**
 * A reply raises its parent's reply count: returns the parent's new copy if it is held
 * and older than the reply, else null (a parent not held is told later, when loaded).
 */
function bumpParent(state, reply) {
  if (!isSeq(reply.reply_to) || !Number.isSafeInteger(reply.parent_replies)) return null;
  const replies = { rev: reply.seq, count: reply.parent_replies };
  const index = indexOfSeq(state.messages, reply.reply_to);
  if (index < 0) {
    if (reply.reply_to < reply.seq) remember(state, reply.reply_to, { replies });
    return null;
  }
  const parent = state.messages[index];
  const next = withReplies(parent, replies);
  if (next === parent) return null;
  state.messages[index] = next;
  return next;
}

/**
 * A new `message` frame. Returns `{added, changed}`: the message as added (null if its
 * seq was seen already) and the copies it changed (its parent's, for a reply).
 */
export function addMessage(state, message) {
  if (!isSeq(message.seq) || message.seq <= state.seq) return { added: null, changed: [] };
  state.seq = message.seq;
  const added = settle(state, message);
  state.messages.push(added);
  const parent = bumpParent(state, added);
  return { added, changed: parent ? [parent] : [] };
}

/**
 * A `change` frame: replaces the held copy of its target when the change's copy is not
 * older (by `rev`). Returns the new copy, or null when nothing shown changed (an older or
 * repeated change, or a target not held: remembered for when it is loaded).
 */
export function applyChange(state, change) {
  if (isSeq(change.seq) && change.seq > state.seq) state.seq = change.seq;
  const message = change.message;
  if (!message || typeof message !== "object" || !isSeq(message.seq)) return null;
  if (isSeq(change.target) && change.target !== message.seq) return null;
  if (message.deleted) state.deleted.add(message.seq);
  const index = indexOfSeq(state.messages, message.seq);
  if (index < 0) {
    remember(state, message.seq, { message });
    return null;
  }
  const copy = state.messages[index];
  if (revOf(message) < revOf(copy)) return null;
  const next = settle(state, message);
  if (sameCopy(next, copy)) return null;
  state.messages[index] = next;
  return next;
}

/**
 * A page of history (`history`: earlier messages, or the window around one): adds the
 * messages not held, each where its seq goes (a page may fill a hole between held
 * messages), with the changes that came while they were not held applied. A held copy
 * is replaced only by a newer one (by `rev`); a message past `seq` (the last entry seen)
 * is left to come live. Returns `{added, changed}`: the messages added, in seq order,
 * and the held copies that changed (replaced, or a parent whose replies now count more).
 */
export function mergePage(state, page) {
  const fresh = [];
  const changed = new Map();
  const sorted = page.filter((m) => m && isSeq(m.seq) && m.seq <= state.seq).sort((a, b) => a.seq - b.seq);
  for (const message of sorted) {
    if (fresh.length && message.seq === fresh.at(-1).seq) continue;
    const index = indexOfSeq(state.messages, message.seq);
    if (index < 0) {
      fresh.push(withLate(state, message));
      continue;
    }
    const held = state.messages[index];
    if (revOf(message) <= revOf(held)) continue;
    const next = settle(state, message);
    if (sameCopy(next, held)) continue;
    state.messages[index] = next;
    changed.set(next.seq, next);
  }
  if (fresh.length === 0) return { added: [], changed: [...changed.values()] };
  const merged = [];
  let i = 0;
  for (const message of fresh) {
    while (i < state.messages.length && state.messages[i].seq < message.seq) merged.push(state.messages[i++]);
    merged.push(message);
  }
  while (i < state.messages.length) merged.push(state.messages[i++]);
  state.messages = merged;
  for (const message of fresh) {
    const parent = bumpParent(state, message);
    if (parent) changed.set(parent.seq, parent);
  }
  return { added: fresh, changed: [...changed.values()].sort((a, b) => a.seq - b.seq) };
}

/**
 * A fresh start (a join the server could not recover): the room's messages are
 * `history`, current as of `seq`. Changes remembered for messages not held are dropped
 * (what is loaded from now on is at least as new); known deletions are kept unless the
 * log itself is new (`sameLog` false: its seqs are other messages).
 */
export function resetMessages(state, history, seq, sameLog) {
  state.late.clear();
  if (!sameLog) state.deleted.clear();
  const messages = [];
  for (const message of history) {
    if (!isSeq(message.seq) || (messages.length && message.seq <= messages.at(-1).seq)) continue;
    messages.push(settle(state, message));
  }
  state.messages = messages;
  state.seq = Math.max(isSeq(seq) ? seq : 0, messages.length ? messages.at(-1).seq : 0);
}

/**
 * A recovered join: `history` (the messages in the gap, each current) then `changes`
 * (the change entries in the gap). Returns `{added, changed}`: the messages added and
 * the last copy of every held message that changed, in seq order.
 */
export function applyGap(state, history, changes) {
  const added = [];
  const changed = new Map();
  for (const message of history) {
    const result = addMessage(state, message);
    if (result.added) added.push(result.added);
    for (const copy of result.changed) changed.set(copy.seq, copy);
  }
  for (const change of changes) {
    const copy = applyChange(state, change);
    if (copy) changed.set(copy.seq, copy);
  }
  // A message added in this gap and changed in it too is drawn once, as it is now.
  const addedSeqs = new Set(added.map((m) => m.seq));
  const current = added.map((m) => messageAt(state, m.seq) || m);
  const others = [...changed.values()].filter((m) => !addedSeqs.has(m.seq)).sort((a, b) => a.seq - b.seq);
  return { added: current, changed: others.map((m) => messageAt(state, m.seq) || m) };
}

/**
 * Reactions as `[[emoji, [username, ...]], ...]`, whatever the frame held: only string
 * emoji with a non-empty list of distinct string usernames.
 */
export function reactionList(reactions) {
  if (!reactions || typeof reactions !== "object" || Array.isArray(reactions)) return [];
  const list = [];
  for (const [emoji, users] of Object.entries(reactions)) {
    if (!emoji || !Array.isArray(users)) continue;
    const names = [...new Set(users.filter((u) => typeof u === "string"))];
    if (names.length) list.push([emoji, names]);
  }
  return list;
}

/**
 * How message `message` shows while `ops` (this user's edit, delete, react and unreact
 * frames for it not yet acknowledged, oldest first) are on their way: their effect
 * applied, and what is still saving marked. A deleted message shows no body, whatever
 * is pending.
 */
export function displayed(message, ops, username) {
  const deleted = Boolean(message.deleted);
  const shown = {
    message,
    deleted,
    body: deleted ? "" : String(message.body ?? ""),
    reactions: reactionList(message.reactions),
    saving: false, // an edit on its way
    deleting: false,
    reacting: new Set(), // emoji whose toggle is on its way
  };
  if (deleted) return shown;
  for (const op of ops || []) {
    if (op.op === "edit") {
      shown.body = String(op.body);
      shown.saving = true;
    } else if (op.op === "delete") {
      shown.deleting = true;
    } else if (op.op === "react" || op.op === "unreact") {
      shown.reacting.add(op.emoji);
      const entry = shown.reactions.find(([emoji]) => emoji === op.emoji);
      const users = entry ? entry[1].filter((u) => u !== username) : [];
      if (op.op === "react") users.push(username);
      if (entry) entry[1] = users;
      else if (users.length) shown.reactions.push([op.emoji, users]);
    }
  }
  shown.reactions = shown.reactions.filter(([, users]) => users.length > 0);
  return shown;
}

/** Whether `username` has reacted with `emoji` on a displayed message. */
export function hasReacted(shown, emoji, username) {
  const entry = shown.reactions.find(([e]) => e === emoji);
  return Boolean(entry && entry[1].includes(username));
}

/** The last message `username` sent that is not deleted (what Up arrow edits), or null. */
export function lastOwnMessage(state, username) {
  for (let i = state.messages.length - 1; i >= 0; i -= 1) {
    const message = state.messages[i];
    if (message.user && message.user.username === username && !message.deleted) return message;
  }
  return null;
}

/** The held replies to message `seq`, oldest first. */
export function repliesTo(state, seq) {
  return state.messages.filter((m) => m.reply_to === seq);
}

/** A message body as one short line of plain text (for quotes). */
export function excerpt(body, length = 80) {
  const text = String(body ?? "").replace(/\s+/g, " ").trim();
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
