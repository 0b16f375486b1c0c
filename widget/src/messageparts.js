// The parts of a message's item that replies, reactions, edits and deletions add (#15):
// the quote of the message replied to, the foot (reactions, replies, "edited"), the
// actions, the reaction picker, the editor and the delete confirmation; and what
// mentions add: names in place of `@username`, and an entry of the unread mentions. Each is built
// from what it is given; view.js decides when to draw which. Emoji and names are other
// people's: they go into text nodes and attribute values only.
import { COMMON_EMOJI, excerpt, hasReacted } from "./conversation.js";
import { h, svgNode } from "./dom.js";
import { bodyWithNames, mentionParts } from "./mentions.js";

/** The delete action's icon: a bin (drawn, so that it needs no emoji font). */
function binIcon() {
  const svg = svgNode("svg", { viewBox: "0 0 16 16", width: "14", height: "14", "aria-hidden": "true" });
  svg.append(svgNode("path", { d: "M2.5 4.5h11M6.5 4.5V3h3v1.5M4 4.5l.7 9h6.6l.7-9M6.8 7v4.5M9.2 7v4.5" }));
  return svg;
}

/**
 * Above a reply: who wrote message `parentSeq` and how it starts (`parent` is null when
 * it is not loaded); a click (data-action "quote") shows it.
 */
export function quoteNode(parentSeq, parent, authorLabel) {
  const quote = h("button", {
    class: "jce-quote",
    type: "button",
    "data-action": "quote",
    "data-parent": String(parentSeq),
    title: "Show the message this replies to",
  });
  if (!parent) {
    quote.append(h("span", { class: "jce-quote-text", text: "a reply to an earlier message" }));
    return quote;
  }
  quote.append(h("span", { class: "jce-quote-author", text: authorLabel }));
  if (parent.deleted) quote.append(h("span", { class: "jce-quote-text jce-deleted", text: "message deleted" }));
  else quote.append(h("span", { class: "jce-quote-text", text: excerpt(parent.body) }));
  return quote;
}

/**
 * Under a message: its reactions (a chip per emoji: count, yours pressed, who in the
 * title), its reply count and whether it was edited; null when there is none of these.
 * `shown` is displayed(message, ...); `labelOf(username)` names a person.
 */
export function footNode(message, shown, username, labelOf) {
  const parts = [];
  if (!shown.deleted) {
    for (const [emoji, users] of shown.reactions) {
      const mine = hasReacted(shown, emoji, username);
      const chip = h(
        "button",
        {
          class: "jce-reaction",
          type: "button",
          "data-action": "reaction",
          "data-emoji": emoji,
          "aria-pressed": String(mine),
          title: `${users.map(labelOf).join(", ")} reacted with ${emoji}`,
        },
        h("span", { class: "jce-reaction-emoji", text: emoji }),
        h("span", { class: "jce-reaction-count", text: String(users.length) }),
      );
      if (mine) chip.classList.add("jce-mine");
      if (shown.reacting.has(emoji)) chip.classList.add("jce-saving");
      parts.push(chip);
    }
  }
  const replies = Number.isSafeInteger(message.replies) ? message.replies : 0;
  if (replies > 0) {
    const text = replies === 1 ? "1 reply" : `${replies} replies`;
    parts.push(h("button", { class: "jce-replies", type: "button", "data-action": "thread", text, title: "Show the thread" }));
  }
  if (shown.saving) parts.push(h("span", { class: "jce-edited", text: "saving…" }));
  else if (shown.deleting) parts.push(h("span", { class: "jce-edited", text: "deleting…" }));
  else if (!shown.deleted && typeof message.edited === "number") {
    const title = `edited ${new Date(message.edited * 1000).toLocaleString()}`;
    parts.push(h("span", { class: "jce-edited", text: "edited", title }));
  }
  return parts.length ? h("div", { class: "jce-foot" }, ...parts) : null;
}

/**
 * The buttons shown on a message (on hover or focus): reply and react for anyone; edit
 * on your own messages only; delete on your own, and on anyone's when `canDelete` (for a
 * moderator: hello.moderator).
 */
export function actionsNode(own, canDelete = own) {
  const button = (action, text, label) =>
    h("button", { class: "jce-action", type: "button", "data-action": action, text, title: label, "aria-label": label });
  const actions = h("div", { class: "jce-actions" }, button("reply", "↩", "Reply"), button("react", "☺", "Add a reaction"));
  if (own) actions.append(button("edit", "✎", "Edit"));
  if (own || canDelete) {
    const label = own ? "Delete" : "Delete (as a moderator)";
    const remove = button("delete", "", label);
    remove.append(binIcon());
    actions.append(remove);
  }
  return actions;
}

/** The reaction picker: the common emoji, those `username` reacted with pressed. */
export function pickerNode(shown, username) {
  const picker = h("div", { class: "jce-picker", role: "group", "aria-label": "Add a reaction" });
  for (const emoji of COMMON_EMOJI) {
    const mine = hasReacted(shown, emoji, username);
    const label = mine ? `Take back ${emoji}` : `React with ${emoji}`;
    const attrs = { class: "jce-pick", type: "button", "data-action": "reaction", "data-emoji": emoji };
    picker.append(h("button", { ...attrs, text: emoji, title: label, "aria-label": label, "aria-pressed": String(mine) }));
  }
  return picker;
}

/** Edit in place: the body in a text box (Enter saves, Esc cancels), and buttons. */
export function editorNode(draft) {
  const input = h("textarea", { class: "jce-edit-input", rows: "2", "aria-label": "Edit the message" });
  input.value = draft;
  const save = h("button", { class: "jce-edit-save", type: "button", "data-action": "save-edit", text: "Save" });
  const cancel = h("button", { class: "jce-edit-cancel", type: "button", "data-action": "cancel-edit", text: "Cancel" });
  const hint = h("span", { class: "jce-edit-hint", text: "Enter to save · Esc to cancel" });
  return h("div", { class: "jce-editor" }, input, h("div", { class: "jce-editor-buttons" }, hint, cancel, save));
}

/** The question a deletion asks first, in the message itself. */
export function confirmNode() {
  return h(
    "div",
    { class: "jce-confirm", role: "alertdialog", "aria-label": "Delete this message?" },
    h("span", { text: "Delete this message for everyone?" }),
    h("button", { class: "jce-confirm-cancel", type: "button", "data-action": "cancel-delete", text: "Cancel" }),
    h("button", { class: "jce-confirm-delete", type: "button", "data-action": "confirm-delete", text: "Delete" }),
  );
}

const VERBATIM = new Set(["CODE", "PRE", "A"]); // code is shown as typed; a link's text is the link's

/**
 * In a rendered (sanitized) body `container`, show each `@username` of `mentioned` (a
 * Set: the usernames the server found mentioned) as `@` and the person's name, marked;
 * more strongly for `me`. `labelOf(username)` names a person. Only text nodes are
 * split, and the names go in as text: nothing from the body or a name becomes HTML.
 * Code and link texts are left as they are.
 */
export function highlightMentions(container, mentioned, labelOf, me) {
  const texts = [];
  const walk = (node) => {
    for (const child of node.childNodes) {
      if (child.nodeType === 3) texts.push(child);
      else if (child.nodeType === 1 && !VERBATIM.has(child.nodeName)) walk(child);
    }
  };
  walk(container);
  for (const text of texts) {
    const parts = mentionParts(text.data, mentioned);
    if (parts.every((part) => typeof part === "string")) continue;
    text.replaceWith(
      ...parts.map((part) => {
        if (typeof part === "string") return part;
        const mark = h("span", { class: "jce-mention", title: `@${part.username}`, "data-username": part.username, text: `@${labelOf(part.username)}` });
        if (part.username === me) mark.classList.add("jce-mention-me");
        return mark;
      }),
    );
  }
}

/**
 * An unread mention in the list: where, who, when and how it starts (its mentions as
 * names, `labelOf(username)`); a click opens it. All of it is text.
 */
export function mentionItemNode(entry, authorLabel, when, labelOf) {
  const body = bodyWithNames(entry.message, labelOf);
  const button = h(
    "button",
    { class: "jce-mention-item", type: "button", "data-room": entry.room, "data-seq": String(entry.seq) },
    h(
      "span",
      { class: "jce-mention-where" },
      h("span", { class: "jce-mention-room", text: `#${entry.room}` }),
      h("span", { class: "jce-mention-author", text: authorLabel }),
      h("time", { class: "jce-mention-time", text: when }),
    ),
    h("span", { class: "jce-mention-text", text: excerpt(body, 140) }),
  );
  return h("li", {}, button);
}
