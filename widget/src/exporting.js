// Export (#15, item 7): a room's conversation as Markdown, from the messages the widget
// holds (all of them: view.js loads every earlier page first), each with every change
// applied. The same layout as the server's export (jupyter_chat_ext/export.py): a
// heading line per message, the body as its source (math and code untouched), a deleted
// message as "(deleted)", a reply's "↪ reply to #N", and notes for an edit, replies,
// reactions and mentions. No DOM here: view.js downloads the text.

/** A timestamp as exports show it: UTC, to the second. */
export function when(ts) {
  if (!Number.isFinite(ts)) return "?";
  const iso = new Date(ts * 1000).toISOString(); // 2026-12-03T14:05:29.123Z
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

/** Plain text (a name, a room) that Markdown shows as it is, on one line. */
export function mdText(text) {
  return String(text)
    .split(/\s+/)
    .filter(Boolean)
    .join(" ")
    .replace(/([\\`*_[\]<>#|~])/g, "\\$1");
}

function nameOf(user) {
  return String(user.display_name || user.name || user.username);
}

function counted(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

/** The notes under a message: edited, replies, reactions, mentions (plain text). */
export function notesOf(message) {
  const notes = [];
  if (Number.isFinite(message.edited) && message.edited && !message.deleted) notes.push(`edited ${when(message.edited)}`);
  if (Number.isSafeInteger(message.replies) && message.replies > 0) notes.push(counted(message.replies, "reply", "replies"));
  const reactions = message.reactions && typeof message.reactions === "object" ? message.reactions : {};
  for (const [emoji, names] of Object.entries(reactions)) {
    if (!Array.isArray(names) || names.length === 0) continue;
    notes.push(`${emoji} ${names.length} (${names.map(String).join(", ")})`);
  }
  if (Array.isArray(message.mentions) && message.mentions.length) {
    notes.push(`mentions ${message.mentions.map((name) => `@${name}`).join(", ")}`);
  }
  return notes;
}

/** A size in bytes as people read it. */
function sizeText(size) {
  if (!Number.isSafeInteger(size) || size < 0) return "?";
  if (size < 1024) return `${size} B`;
  return size < 1024 * 1024 ? `${(size / 1024).toFixed(1)} KiB` : `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * The line of a message's attachment (#16): its name linked to where the server keeps
 * it (`linkOf(attachment)`: an absolute URL on this chat server, or null), its type and
 * size. The name is untrusted: shown as text, never as Markdown.
 */
export function attachmentLine(attachment, linkOf = () => null) {
  if (!attachment || typeof attachment !== "object") return null;
  const name = mdText(typeof attachment.name === "string" && attachment.name ? attachment.name : "attachment");
  const link = linkOf(attachment);
  const mime = typeof attachment.mime === "string" ? mdText(attachment.mime) : "?";
  const shown = typeof link === "string" && /^https?:\/\//.test(link) ? `[${name}](<${link.replace(/[<>\s]/g, encodeURIComponent)}>)` : name;
  return `📎 ${shown} (${mime}, ${sizeText(attachment.size)})`;
}

/**
 * Room `room`'s `messages` (oldest first, every change applied) as Markdown; `exported`
 * (seconds) is the time it says it was exported; `linkOf(attachment)` where an
 * attachment's bytes are (see attachmentLine).
 */
export function exportMarkdown(room, messages, exported = Date.now() / 1000, linkOf = () => null) {
  const lines = [
    `# ${mdText(room)}`,
    "",
    `Exported from jupyter-chat-ext on ${when(exported)}: ${counted(messages.length, "message", "messages")}.`,
  ];
  for (const message of messages) {
    const user = message.user && typeof message.user === "object" ? message.user : { username: "?" };
    lines.push("", "---", "");
    lines.push(`**${mdText(nameOf(user))}** (@${mdText(user.username)}) · ${when(message.ts)} · #${message.seq}`);
    lines.push("");
    if (Number.isSafeInteger(message.reply_to)) lines.push(`↪ reply to #${message.reply_to}`, "");
    lines.push(message.deleted ? "*(deleted)*" : String(message.body ?? ""));
    const attached = message.deleted ? null : attachmentLine(message.attachment, linkOf);
    if (attached) lines.push("", attached);
    const notes = notesOf(message);
    if (notes.length) lines.push("", `*${mdText(notes.join(" · "))}*`);
  }
  return `${lines.join("\n")}\n`;
}

/** A file name for room `room`'s export: its name with only safe characters. */
export function exportFileName(room) {
  const safe = String(room).replace(/[^\p{L}\p{N}._-]+/gu, "_").replace(/^[._]+/, "").slice(0, 100);
  return `${safe || "room"}.md`;
}
