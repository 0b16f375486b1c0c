// The composer's @-mention autocomplete as plain state (no DOM): what is being typed after
// an `@`, who may be proposed (the room's members and recent speakers), which of them
// match, what the keys do, and the text once one is picked. view.js draws it.
//
// A mention is `@username` in the body; the server finds them with the pattern
// `(?<![\w@])@([\w.\-]+)` (trailing dots and hyphens not part of the name), so only
// usernames that pattern can name whole are proposed.

const NAME_CHARS = "\\p{L}\\p{N}_.\\-";
const TYPED = new RegExp(`(?:^|[^\\p{L}\\p{N}_@])@([${NAME_CHARS}]*)$`, "u");
const MENTIONABLE = /^[\p{L}\p{N}_](?:[\p{L}\p{N}_.-]*[\p{L}\p{N}_])?$/u;
const QUERY_MAX = 64; // past this many characters after `@`, it is not a mention being typed
const SPEAKERS_MAX = 50; // recent speakers looked at (newest first)

/** Whether `@username` names `username` whole, as the server reads mentions. */
export function isMentionable(username) {
  return typeof username === "string" && username.length <= 200 && MENTIONABLE.test(username);
}

/**
 * The mention being typed right before the caret: `{start, query}` (`start` is the
 * index of its `@`), or null when the caret is not right after `@` and name characters.
 */
export function mentionQuery(text, caret) {
  const before = String(text).slice(0, caret);
  const match = TYPED.exec(before);
  if (!match || match[1].length > QUERY_MAX) return null;
  return { start: before.length - match[1].length - 1, query: match[1] };
}

function nameOf(user) {
  return String(user.display_name || user.name || user.username);
}

/**
 * Who may be proposed: the authors of the room's recent messages (newest first), then
 * its members not among them (by name); each once, never `me`, only mentionable usernames.
 * `members` is an iterable of users, `messages` the room's messages in seq order.
 */
export function mentionCandidates(members, messages, me) {
  const seen = new Set();
  const found = [];
  const take = (user) => {
    if (!user || typeof user !== "object" || !isMentionable(user.username)) return;
    if (user.username === me || seen.has(user.username)) return;
    seen.add(user.username);
    found.push(user);
  };
  let looked = 0;
  for (let i = messages.length - 1; i >= 0 && looked < SPEAKERS_MAX; i -= 1) {
    const message = messages[i];
    if (message.deleted) continue;
    looked += 1;
    take(message.user);
  }
  const speakers = found.length;
  for (const user of members) take(user);
  const rest = found.splice(speakers).sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
  return found.concat(rest);
}

/** How well `user` matches `query` (lower case): 0 best, 2 worst, -1 no match. */
function score(user, query) {
  if (!query) return 0;
  const username = user.username.toLowerCase();
  const name = nameOf(user).toLowerCase();
  if (username.startsWith(query) || name.startsWith(query)) return 0;
  if (name.split(/[\s._-]+/).some((word) => word.startsWith(query))) return 1;
  if (username.includes(query) || name.includes(query)) return 2;
  return -1;
}

/** The candidates that match `query`, best first (ties keep their order), at most `limit`. */
export function filterCandidates(candidates, query, limit = 8) {
  const wanted = String(query).toLowerCase();
  return candidates
    .map((user, index) => ({ user, index, score: score(user, wanted) }))
    .filter((entry) => entry.score >= 0)
    .sort((a, b) => a.score - b.score || a.index - b.index)
    .slice(0, limit)
    .map((entry) => entry.user);
}

/**
 * What the autocomplete shows for the composer's `text` and `caret`: `{start, query,
 * items, index}`, or null (closed). `dismissed` is the `start` of a mention the user
 * closed with Esc (it stays closed while the caret is in that mention); `previous` is
 * what was shown (the selected person stays selected while still listed).
 */
export function autocompleteFor(text, caret, candidates, { dismissed = null, previous = null, limit = 8 } = {}) {
  const typed = mentionQuery(text, caret);
  if (!typed || typed.start === dismissed) return null;
  const items = filterCandidates(candidates, typed.query, limit);
  if (items.length === 0) return null;
  const selected = previous && previous.items[previous.index];
  const kept = selected ? items.findIndex((user) => user.username === selected.username) : -1;
  return { ...typed, items, index: kept >= 0 ? kept : 0 };
}

/**
 * A key pressed while the autocomplete is open: `{state, action}` where action is
 * "move" (a new `state`), "insert" (put `state.items[state.index]` in), "close", or
 * null when the key is not the autocomplete's (it goes to the composer).
 */
export function autocompleteKey(state, key) {
  const count = state.items.length;
  if (key === "ArrowDown") return { state: { ...state, index: (state.index + 1) % count }, action: "move" };
  if (key === "ArrowUp") return { state: { ...state, index: (state.index - 1 + count) % count }, action: "move" };
  if (key === "Enter" || key === "Tab") return { state, action: "insert" };
  if (key === "Escape") return { state, action: "close" };
  return { state, action: null };
}

/**
 * The composer's text once `username` replaces the mention typed from `start` to
 * `caret`: `{text, caret}`, the caret after `@username` and one space.
 */
export function insertMention(text, start, caret, username) {
  const after = text.slice(caret);
  const mention = `@${username}`;
  const space = after.startsWith(" ") ? "" : " ";
  const next = text.slice(0, start) + mention + space + after;
  return { text: next, caret: start + mention.length + 1 };
}
