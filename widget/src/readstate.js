// Read markers as the window uses them, as plain rules (no DOM): unread counts, where
// the "new messages" line goes, which read marker to send, the document title while
// you have unread mentions, and what a notification of a mention says. The marker is
// the server's (`joined.read`, `read` frames): the last seq you read in a room, the same
// in all your tabs, so reading in one clears the counts in the others.

const TITLE_PREFIX = /^\(@\d+\+?\) /;
const BADGE_MAX = 99;

/**
 * How many of `messages` (a room's, in seq order) you have not read: those from others,
 * not deleted, past `marker`. `more` is true when there may be more than that: some seq
 * past the marker is not held. `ranges` are the seq ranges held (segments.js), the last
 * one live; any seq between the marker and its first is in a hole (or an island that
 * does not reach it), unless that first is the room's start.
 */
export function unreadCount(messages, marker, me, ranges = []) {
  let count = 0;
  for (let i = messages.length - 1; i >= 0 && messages[i].seq > marker; i -= 1) {
    const message = messages[i];
    if (!message.deleted && !(message.user && message.user.username === me)) count += 1;
  }
  const live = ranges.at(-1);
  const more = Boolean(live) && live[0] > 1 && live[0] - 1 > marker;
  return { count, more };
}

/** What a tab's unread badge says ("" for none): "3", "3+", "99+". */
export function badgeText({ count, more }) {
  if (count > BADGE_MAX) return `${BADGE_MAX}+`;
  if (count === 0) return "";
  return more ? `${count}+` : String(count);
}

/** The first message past `marker` that is someone else's and not deleted (the "new messages" line goes before it), or null. */
export function firstUnread(messages, marker, me) {
  if (marker === null || marker === undefined) return null;
  for (const message of messages) {
    if (message.seq <= marker || message.deleted) continue;
    if (message.user && message.user.username === me) continue;
    return message.seq;
  }
  return null;
}

/**
 * Where the "new messages" line goes: before message `current` (null: nowhere;
 * undefined: not placed yet). While you attend the room (it is shown and the page is
 * visible) it stays where it was placed when you came, so what was new then stays
 * marked as you read on, and what arrives while you watch is not; otherwise it moves to
 * `unread`, the first message you have not read (see firstUnread; undefined while your
 * marker is not known), so what arrives meanwhile is marked when you come back.
 */
export function linePlace(current, attended, unread) {
  return attended && current !== undefined ? current : unread;
}

/**
 * The read marker to send for having read up to `upTo`, or null: markers only move
 * forward, past both the one known (`marker`) and the last one sent (`sent`).
 */
export function readTarget(marker, sent, upTo) {
  if (!Number.isSafeInteger(upTo) || upTo <= 0) return null;
  return upTo > Math.max(marker || 0, sent || 0) ? upTo : null;
}

/** The document title with `count` unread mentions, e.g. "(@2) chat.ipynb"; 0 restores it. */
export function titleText(title, count) {
  const bare = String(title).replace(TITLE_PREFIX, "");
  if (!count) return bare;
  return `(@${count > BADGE_MAX ? `${BADGE_MAX}+` : count}) ${bare}`;
}

/** A message body as one line of plain text, at most `length` characters. */
function oneLine(body, length) {
  const text = String(body ?? "").replace(/\s+/g, " ").trim();
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

/**
 * What the browser notification of a mention says: `{title, body, tag}`. `label` is
 * how the window names its author. The tag makes the same mention, notified by several
 * windows of this page or tabs, one notification.
 */
export function mentionNotice(room, message, label) {
  return {
    title: oneLine(`${label} mentioned you in #${room}`, 120),
    body: oneLine(message.body, 200),
    tag: `jce-mention:${room}:${message.seq}`,
  };
}
