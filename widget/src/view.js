// The chat window: room tabs, messages, members, typing, live values and composer.
// Everything from other people is inserted as text, except message bodies, which go
// through renderMarkdown() (sanitized); reactions and names are text nodes or attribute
// values, never HTML. Updates are incremental: a message that arrives, changes (edit,
// deletion, reactions, replies), is acknowledged or fails touches its own node (and the
// quotes of it), "load earlier" prepends, and a value redraws its own topic. A view
// shares its connection with every other view of its model. What a message shows comes
// from conversation.js (its state) and messageparts.js (the nodes of replies, reactions,
// edits and deletions); this file decides what is open where and handles the actions.
// Mentions and read markers (#15): the @-autocomplete (autocomplete.js), mentions shown
// as names, unread counts and the "new messages" line from your read marker
// (readstate.js), your unread mentions across rooms (mentions.js), and the page's title
// and notifications (attention.js). Search and export (#15): a search box whose results
// (search.js: the matched words marked, as text) open the room at the message, and an
// export of the active room as Markdown (exporting.js) after loading all its history.
// Opening a room at a message that is not held (a search result, a mention, a reply's
// parent) loads the messages around it in one request: an island (segments.js). The list
// shows one segment, the live one or an island, with "load earlier" above it and, under
// an island, "load later" (toward the live messages, which it joins) and "jump to newest".
// Attachments (#16): a message's is drawn by attachments.js; a file pasted or dropped on
// the composer is uploaded and sent by upload.js.
// Long histories and busy rooms (#17): the list holds a window of the segment's messages
// in the DOM (at most WINDOW_MAX items; the rest are drawn as they scroll into view), is
// drawn a screenful first and filled in steps after, and keeps the nodes of messages
// that did not change when it is drawn again (a reconnect, a reset room). The values
// panel and the member list redraw what changed, at most once per frame.
import { attachmentNode } from "./attachments.js";
import { askToNotify, notificationPermission, notify, reportMentions } from "./attention.js";
import { autocompleteFor, autocompleteKey, insertMention, mentionCandidates, mentionQuery } from "./autocomplete.js";
import { displayed, excerpt, hasReacted, indexOfSeq, lastOwnMessage, messageAt, repliesTo } from "./conversation.js";
import { h, placeChildren, svgNode } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { bodyWithNames, mentionCount, mentionList, mentionsUser } from "./mentions.js";
import { actionsNode, confirmNode, editorNode, footNode, highlightMentions, mentionItemNode, pickerNode, quoteNode } from "./messageparts.js";
import { labelsFor, memberText, nameOf } from "./names.js";
import { exportFileName, exportMarkdown } from "./exporting.js";
import { markedParts, searchable } from "./search.js";
import { badgeText, firstUnread, linePlace, mentionNotice, unreadCount } from "./readstate.js";
import { firstAtLeast, messagesIn, rangeIndexOf } from "./segments.js";
import { sparkline } from "./sparkline.js";
import { ChatHttp } from "./transfer.js";
import { filesOf, Uploads } from "./upload.js";

const GROUP_SECONDS = 300;
const TYPING_RENEW_MS = 2000;
const ERROR_SHOW_MS = 8000;
const NEAR_EDGE_PX = 40;
const SIDE_MIN_PX = { row: 180, column: 48 }; // the smallest members/values panel
const PANE_MIN_PX = { row: 200, column: 48 }; // what the panel always leaves to messages
const SIDE_STEP_PX = 24; // one arrow key on the splitter
const FLASH_MS = 1600; // how long a message jumped to stays highlighted
const READ_DELAY_MS = 300; // read markers go out at most this often per window
const WINDOW_FIRST = 25; // message items drawn at once when the list is drawn: a screenful and more
const WINDOW_STEP = 15; // items drawn per step as the list fills or scrolls into messages held
const WINDOW_FILL = 150; // the list fills to this many items after it is drawn
const WINDOW_MAX = 300; // items kept in the DOM (trimmed, away from the view, past this and a step)

// What the widget says when the server refuses one of your changes (else its message).
const REFUSALS = {
  forbidden: {
    edit: "Only its author can edit a message.",
    delete: "Only its author (or a moderator) can delete a message.",
  },
  not_found: "That message is not in this room's history.",
  message_deleted: "That message was deleted.",
  too_many_reactions: "This message has as many different reactions as it can take; add one of those instead.",
};

let viewCount = 0;

/** The panel toggle's icon: a window with a panel on its right (filled while shown). */
function panelIcon() {
  const svg = svgNode("svg", { viewBox: "0 0 16 16", width: "16", height: "16", "aria-hidden": "true" });
  svg.append(
    svgNode("rect", { x: "1.5", y: "2.5", width: "13", height: "11", rx: "1.5" }),
    svgNode("rect", { class: "jce-panel-icon-side", x: "9.5", y: "2.5", width: "5", height: "11" }),
  );
  return svg;
}

/** Set `node`'s text, unless it says that already (a write relays it out, many times a second in a busy room). */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function initialsOf(user) {
  if (user.initials) return user.initials;
  const parts = nameOf(user).split(/\s+/).filter(Boolean);
  return parts.map((p) => p[0]).join("").slice(0, 2).toUpperCase() || "?";
}

function colorOf(user) {
  if (user.color && /^(#[0-9a-f]{3,8}|var\(--[\w-]+\))$/i.test(user.color)) return user.color;
  let hash = 0;
  for (const ch of user.username) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 45%)`;
}

// Formatters made once (toLocaleTimeString makes one per call: slow for every message).
const CLOCK = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const CLOCK_SECONDS = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const DATE_TIME = new Intl.DateTimeFormat([], { year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" });

function clock(ts, seconds = false) {
  return (seconds ? CLOCK_SECONDS : CLOCK).format(new Date(ts * 1000));
}

function avatar(user) {
  const node = h("span", { class: "jce-avatar", text: initialsOf(user), "aria-hidden": "true" });
  node.style.background = colorOf(user);
  return node;
}

function fmt(number) {
  return Number.isInteger(number) ? String(number) : String(Number(number.toPrecision(4)));
}

function cellText(value) {
  if (typeof value === "number") return fmt(value);
  if (typeof value === "string") return value;
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

/** A small table (first rows) for a DataFrame, a Series or a dict. */
function table(columns, index, cells, length, totalColumns = columns.length) {
  const head = h("tr", {}, h("th", { text: "" }), ...columns.map((c) => h("th", { text: c })));
  const rows = index.map((label, r) =>
    h("tr", {}, h("th", { text: cellText(label) }), ...cells.map((col) => h("td", { text: cellText(col[r]) }))),
  );
  const node = h("table", { class: "jce-table" }, h("thead", {}, head), h("tbody", {}, ...rows));
  const more = [];
  if (length > index.length) more.push(`${index.length} of ${length} rows`);
  if (totalColumns > columns.length) more.push(`${columns.length} of ${totalColumns} columns`);
  return more.length ? h("div", {}, node, h("div", { class: "jce-value-more", text: more.join(", ") })) : node;
}

/** A detail view of a decoded value (see decodeValue): a table, statistics, or null. */
export function detail(model) {
  if (model.kind === "table") return table(model.columns, model.index, model.cells, model.length, model.totalColumns);
  if (model.kind === "array" && model.stats) {
    const { min, mean, max, over, count } = model.stats;
    const sample = over < count ? ` (first ${over} of ${count} values)` : "";
    return h("div", { class: "jce-value-stats", text: `min ${fmt(min)} · mean ${fmt(mean)} · max ${fmt(max)}${sample}` });
  }
  if (model.kind === "invalid") return model.raw ? h("code", { class: "jce-value-raw", text: model.raw }) : null;
  const value = model.value;
  if (model.kind === "json" && value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    const shown = keys.slice(0, 20);
    return table(["value"], shown, [shown.map((k) => value[k])], keys.length);
  }
  return null;
}

/** A short, human summary of a decoded value (see decodeValue). */
export function summarize(model) {
  if (model.kind === "array") return `${model.dtype} [${model.shape.join("×")}]`;
  if (model.kind === "table") return `table, ${model.length} rows × ${model.totalColumns} columns`;
  if (model.kind === "invalid") return `invalid value: ${model.reason}`;
  const value = model.value;
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  }
  if (typeof value === "string") return value.length > 60 ? `${value.slice(0, 59)}…` : value;
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

/** A live value's entry in the panel, empty: drawValue fills it, and updates it in place. */
function valueNode(topic) {
  const text = h("span", { class: "jce-value-text" });
  const chart = h("div", { class: "jce-value-chart" });
  const meta = h("div", { class: "jce-value-meta" });
  const top = h("div", { class: "jce-value-top" }, h("span", { class: "jce-value-topic", text: topic }), text);
  const node = h("div", { class: "jce-value", "data-topic": topic }, top, chart, meta);
  return { node, text, chart, meta, more: null };
}

/** Show `entry` in a value's node (see valueNode); one that cannot be drawn shows as invalid. */
function drawValue(drawn, entry) {
  let model = entry.value;
  let parts;
  try {
    parts = [summarize(model), detail(model), sparkline(entry.series, undefined, undefined, drawn.chart.firstChild)];
  } catch (err) {
    model = { kind: "invalid", reason: `it could not be shown (${err.message})`, raw: "" };
    parts = [summarize(model), null, null];
  }
  const [text, more, svg] = parts;
  setText(drawn.text, text);
  if (svg !== drawn.chart.firstChild) drawn.chart.replaceChildren(...(svg ? [svg] : []));
  if (drawn.more) drawn.more.remove();
  drawn.more = more || null;
  if (more) drawn.meta.before(more);
  setText(drawn.meta, `${nameOf(entry.user)} · ${clock(entry.ts, true)}`);
  drawn.node.classList.toggle("jce-value-invalid", model.kind === "invalid");
}

export class ChatView {
  constructor(el, conn, { room, height, rename = null, http = null }) {
    this.conn = conn;
    this.http = http || ChatHttp.fromSocketUrl(conn.url); // attachments go over HTTP
    this._rename = rename; // async (name) => newName, or null where names are not ours
    this.active = null;
    this.tabs = new Map(); // room name -> {tab, badge, mentionBadge}
    this._pendingNodes = new Map(); // id -> node of a message sent but not acknowledged
    this._nodes = new Map(); // seq -> node in the message list of the active room (the window drawn)
    this._drawnWith = new WeakMap(); // node in the list -> what it was drawn from (see _reusedNode)
    this._drawnAs = undefined; // who the list was drawn for (see _identity)
    this._drawnRoom = null; // the room the list was drawn for
    this._fillFrame = 0;
    this._fillTimer = 0;
    this._drawUp = 0; // messages of a page loaded above the window still to draw (see _fillSoon)
    this._stuck = true; // the view is at the end of the list (as of the last scroll: no layout read)
    this._sticking = false; // it follows messages that came, at the next frame (_settleSoon)
    this._scrolledTo = 0; // scrollTop after the view last went to the end
    this._settleFrame = 0;
    this._people = new Map(); // username -> user, for the names of who reacted
    this._replyTo = null; // seq of the message the composer replies to
    this._thread = null; // seq of the message whose thread is open
    this._open = null; // {kind: "edit" | "confirm" | "pick", seq, where, draft}: one at a time
    this._jump = null; // {seq, flash}: a message being loaded to show it
    this._anchor = null; // a seq in the island shown, or null: the live segment is
    this._missed = 0; // messages that came live while an island was shown
    this._search = null; // id of the search whose answer is awaited
    this._exporting = null; // name of the room whose history is loading to export it
    this._ac = null; // the @-autocomplete shown: {start, query, items, index}, or null
    this._acDismissed = null; // where the mention closed with Esc starts
    this._line = undefined; // seq the "new messages" line is before (see linePlace)
    this._attending = false; // whether the person attended the active room when last looked
    this._onScreen = true; // whether the window is in view (IntersectionObserver)
    this._readTimer = 0;
    this._valueNodes = new Map(); // topic -> its node in the values panel and its parts (see valueNode)
    this._valuesRoom = null; // the room whose values the panel shows
    this._memberNodes = new Map(); // username -> {key, node}: a member's item and what it shows
    this._membersFrame = 0;
    this._dirtyTopics = new Set(); // topics to redraw at the next frame
    this._allValuesDirty = false;
    this._unsubscribe = [];
    this._typingSentAt = 0;
    this._typingActive = false;
    this._errorTimer = null;
    this._valuesFrame = 0;
    this._build(el, height);
    this._subscribe();
    // A window drawn after the connection said hello (another view of the model, or a
    // fast server) has no hello of its own to wait for.
    if (conn.user) this.root.dataset.username = conn.user.username;
    this._showState(conn.state);
    this._renderMentions();
    if (room) this.openRoom(room);
  }

  // ---- layout --------------------------------------------------------------------

  _build(el, height) {
    this.tabList = h("div", { class: "jce-tabs", role: "tablist" });
    this.joinInput = h("input", {
      class: "jce-join",
      type: "text",
      placeholder: "+ join room",
      maxlength: "200",
      "aria-label": "Join a room by name",
    });
    this.stateLabel = h("span", { class: "jce-state-text" });
    this.retryButton = h("button", { class: "jce-retry", type: "button", text: "retry" });
    this.renameButton = h("button", { class: "jce-rename", type: "button", text: "✎", title: "Change your name", "aria-label": "Change your name" });
    this.renameInput = h("input", { class: "jce-rename-input", type: "text", maxlength: "100", "aria-label": "Your name", placeholder: "Your name (Enter)" });
    this.renameButton.hidden = !this._rename;
    this.renameInput.hidden = true;
    this.state = h("span", { class: "jce-state" }, h("span", { class: "jce-dot" }), this.stateLabel, this.renameButton, this.renameInput, this.retryButton);
    const sideId = `jce-side-${++viewCount}`;
    this.sideToggle = h("button", {
      class: "jce-side-toggle",
      type: "button",
      "aria-label": "Members and live values",
      "aria-controls": sideId,
      "aria-expanded": "true",
      title: "Hide members and live values",
    });
    this.sideToggle.append(panelIcon());
    const mentionsId = `jce-mentions-${viewCount}`;
    this.mentionsCount = h("span", { class: "jce-mentions-count" });
    this.mentionsToggle = h(
      "button",
      {
        class: "jce-mentions-toggle",
        type: "button",
        title: "Your unread mentions",
        "aria-label": "Your unread mentions",
        "aria-controls": mentionsId,
        "aria-expanded": "false",
      },
      h("span", { class: "jce-mentions-at", text: "@", "aria-hidden": "true" }),
      this.mentionsCount,
    );
    const searchId = `jce-search-${viewCount}`;
    this.searchInput = h("input", {
      class: "jce-search-input",
      type: "search",
      placeholder: "Search (Enter)",
      maxlength: "1000",
      "aria-label": "Search messages in every room",
      "aria-controls": searchId,
    });
    this.exportButton = h("button", {
      class: "jce-export",
      type: "button",
      text: "⤓",
      title: "Export this room as Markdown",
      "aria-label": "Export this room as Markdown",
    });
    const header = h(
      "header",
      { class: "jce-header" },
      this.tabList,
      this.mentionsToggle,
      this.searchInput,
      this.exportButton,
      this.joinInput,
      this.state,
      this.sideToggle,
    );

    this.earlierButton = h("button", { class: "jce-earlier", type: "button", text: "Load earlier messages" });
    this.list = h("ol", { class: "jce-messages", "aria-live": "polite" });
    this.laterButton = h("button", { class: "jce-later", type: "button", text: "Load later messages" });
    this.laterButton.hidden = true;
    this.pendingList = h("ol", { class: "jce-messages jce-pending" });
    this.emptyNote = h("div", { class: "jce-empty", text: "No messages yet. Say hello!" });
    this.scroller = h("div", { class: "jce-scroller" }, this.earlierButton, this.emptyNote, this.list, this.laterButton, this.pendingList);
    this.newButton = h("button", { class: "jce-new", type: "button", text: "New messages ↓" });
    this.threadTitle = h("span", { class: "jce-thread-title" });
    this.threadClose = h("button", { class: "jce-thread-close", type: "button", text: "×", title: "Close the thread (Esc)", "aria-label": "Close the thread" });
    this.threadList = h("ol", { class: "jce-thread-list" });
    this.threadPanel = h(
      "section",
      { class: "jce-thread", "aria-label": "Thread" },
      h("div", { class: "jce-thread-head" }, this.threadTitle, this.threadClose),
      h("div", { class: "jce-thread-scroller" }, this.threadList),
    );
    this.threadPanel.hidden = true;
    this.mentionsList = h("ul", { class: "jce-mentions-list" });
    this.mentionsEmpty = h("div", { class: "jce-mentions-empty", text: "No unread mentions." });
    this.notifyButton = h("button", { class: "jce-notify", type: "button", text: "Notify me of mentions while this page is hidden" });
    this.notifyNote = h("div", { class: "jce-notify-note" });
    this.mentionsPanel = h(
      "section",
      { class: "jce-mentions", id: mentionsId, "aria-label": "Unread mentions" },
      h("div", { class: "jce-mentions-head", text: "Unread mentions" }),
      this.mentionsEmpty,
      this.mentionsList,
      h("div", { class: "jce-mentions-foot" }, this.notifyButton, this.notifyNote),
    );
    this.mentionsPanel.hidden = true;
    this.searchTitle = h("span", { class: "jce-search-title" });
    this.searchClose = h("button", { class: "jce-search-close", type: "button", text: "×", title: "Close the results (Esc)", "aria-label": "Close the search results" });
    this.searchList = h("ul", { class: "jce-search-list" });
    this.searchPanel = h(
      "section",
      { class: "jce-search", id: searchId, "aria-label": "Search results" },
      h("div", { class: "jce-search-head" }, this.searchTitle, this.searchClose),
      this.searchList,
    );
    this.searchPanel.hidden = true;
    this.unreadLine = h("div", { class: "jce-unread-line", role: "separator" }, h("span", { text: "New messages" }));
    this.pane = h("section", { class: "jce-pane" }, this.scroller, this.newButton, this.threadPanel, this.mentionsPanel, this.searchPanel);
    this.splitter = h("div", {
      class: "jce-splitter",
      role: "separator",
      tabindex: "0",
      "aria-label": "Resize members and live values",
      "aria-controls": sideId,
      "aria-orientation": "vertical",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      title: "Drag or use the arrow keys to resize; Enter hides the panel",
      // The notebook's command-mode shortcuts match any focused element (the arrow keys
      // move between cells); this one's keys are its own.
      "data-lm-suppress-shortcuts": "true",
    });

    this.membersTitle = h("h4", { text: "Members" });
    this.memberList = h("ul", { class: "jce-members" });
    this.moreMembers = h("button", { class: "jce-members-more", type: "button", text: "Show more", title: "Show more of the room's members" });
    this.moreMembers.hidden = true;
    this.valuesList = h("div", { class: "jce-values" });
    this.valuesEmpty = h("div", { class: "jce-values-empty", text: "No live values yet." });
    this.side = h(
      "aside",
      { class: "jce-side", id: sideId, "aria-label": "Members and live values" },
      this.membersTitle,
      this.memberList,
      this.moreMembers,
      h("h4", { text: "Live values" }),
      this.valuesEmpty,
      this.valuesList,
    );

    this.typingLine = h("div", { class: "jce-typing", "aria-live": "polite" });
    this.errorLine = h("div", { class: "jce-error", role: "alert" });
    this.replyText = h("span", { class: "jce-replying-text" });
    this.replyCancel = h("button", { class: "jce-replying-cancel", type: "button", text: "×", title: "Do not reply (Esc)", "aria-label": "Cancel the reply" });
    this.replyBar = h("div", { class: "jce-replying" }, this.replyText, this.replyCancel);
    this.replyBar.hidden = true;
    const acId = `jce-ac-${viewCount}`;
    this.composer = h("textarea", {
      class: "jce-input",
      rows: "2",
      placeholder: "Message (Enter to send, Shift+Enter for a new line)",
      "aria-label": "Message",
      "aria-autocomplete": "list",
      "aria-controls": acId,
      "aria-expanded": "false",
    });
    this.acList = h("ul", { class: "jce-ac", id: acId, role: "listbox", "aria-label": "Mention someone" });
    this.acList.hidden = true;
    this.sendButton = h("button", { class: "jce-send", type: "button", text: "Send" });
    this.uploads = new Uploads(this.conn, this.http, (text) => this._showError(text));
    const footer = h(
      "footer",
      { class: "jce-footer" },
      this.typingLine,
      this.errorLine,
      this.replyBar,
      this.uploads.node,
      this.acList,
      h("div", { class: "jce-compose" }, this.composer, this.sendButton),
    );

    this.main = h("div", { class: "jce-main" }, this.pane, this.splitter, this.side);
    this.root = h("div", { class: "jce-root", "data-lm-suppress-shortcuts": "true" }, header, this.main, footer);
    if (height) this.root.style.height = height;
    el.replaceChildren(this.root);
    this._listenLayout();
  }

  // The panel sits right of the messages, or under them in a narrow widget (a container
  // query in widget.css decides, since a notebook cell is narrower than the window).
  // Its size is a CSS variable per direction, set by dragging the splitter.
  _listenLayout() {
    const listen = (node, type, handler) => node.addEventListener(type, handler);
    listen(this.sideToggle, "click", () => this._showSide(this.side.hidden));
    listen(this.renameButton, "click", () => this._startRename());
    listen(this.renameInput, "keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        this._finishRename();
      } else if (event.key === "Escape") {
        this._endRename();
      }
    });
    listen(this.splitter, "pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      this.splitter.setPointerCapture(event.pointerId);
    });
    listen(this.splitter, "pointermove", (event) => {
      if (!this.splitter.hasPointerCapture(event.pointerId)) return;
      const main = this.main.getBoundingClientRect();
      this._resizeSide(this._stacked() ? main.bottom - event.clientY : main.right - event.clientX);
    });
    listen(this.splitter, "keydown", (event) => {
      const side = this.side.getBoundingClientRect();
      const size = this._stacked() ? side.height : side.width;
      if (event.key === "ArrowLeft" || event.key === "ArrowUp") this._resizeSide(size + SIDE_STEP_PX);
      else if (event.key === "ArrowRight" || event.key === "ArrowDown") this._resizeSide(size - SIDE_STEP_PX);
      else if (event.key === "Enter") {
        this._showSide(false);
        this.sideToggle.focus();
      } else return;
      event.preventDefault();
    });
    this._resizeObserver = new ResizeObserver(() => this._describeSplitter());
    this._resizeObserver.observe(this.main);
    // Whether the person can see the window: a hidden page, or a window scrolled out of
    // the notebook's view, reads nothing.
    this._onVisibility = () => this._attendChanged();
    document.addEventListener("visibilitychange", this._onVisibility);
    if (typeof IntersectionObserver === "function") {
      this._intersection = new IntersectionObserver((entries) => {
        this._onScreen = entries[entries.length - 1].isIntersecting;
        this._attendChanged();
      });
      this._intersection.observe(this.root);
    }
  }

  _stacked() {
    return getComputedStyle(this.main).flexDirection === "column";
  }

  _showSide(open) {
    this.side.hidden = !open;
    this.splitter.hidden = !open;
    this.sideToggle.setAttribute("aria-expanded", String(open));
    this.sideToggle.title = `${open ? "Hide" : "Show"} members and live values`;
  }

  _resizeSide(size) {
    const direction = this._stacked() ? "column" : "row";
    const main = this.main.getBoundingClientRect();
    const total = direction === "column" ? main.height : main.width;
    const clamped = Math.max(SIDE_MIN_PX[direction], Math.min(total - PANE_MIN_PX[direction], size));
    this.root.style.setProperty(direction === "column" ? "--jce-side-height" : "--jce-side-width", `${Math.round(clamped)}px`);
    this._describeSplitter();
  }

  /** The splitter's ARIA orientation and value (the messages' share of the space). */
  _describeSplitter() {
    const stacked = this._stacked();
    const main = this.main.getBoundingClientRect();
    const pane = this.pane.getBoundingClientRect();
    const share = stacked ? pane.height / main.height : pane.width / main.width;
    this.splitter.setAttribute("aria-orientation", stacked ? "horizontal" : "vertical");
    if (Number.isFinite(share)) this.splitter.setAttribute("aria-valuenow", String(Math.round(share * 100)));
  }

  _subscribe() {
    const on = (type, handler) => this._unsubscribe.push(this.conn.on(type, handler));
    on("state", (state) => this._showState(state));
    on("hello", (hello) => {
      this.root.dataset.username = hello.user.username;
      // A reconnect as the same person keeps what is drawn (the joins bring what changed).
      if (this._identity() === this._drawnAs) {
        this._renderMembers();
        this._renderTyping();
        this._showState(this.conn.state);
      } else this._renderAll();
      this._renderMentions();
    });
    on("reset", (room) => {
      this._renderBadge(room);
      if (room !== this.active) return;
      // The island shown is gone with the others: it is loaded again, the view kept.
      if (this._anchor !== null && this._jump === null) this._jump = { seq: this._anchor, flash: false };
      this._anchor = null;
      this._missed = 0;
      this._renderMessages(true);
      this._continueJump();
      this._scheduleRead();
    });
    on("message", (room, message) => this._onMessage(room, message));
    on("loaded", (room, added) => {
      this._renderBadge(room);
      if (room.name === this._exporting) this._continueExport();
      if (room === this.active) this._onLoaded(added);
    });
    on("changed", (room, message) => {
      this._renderBadge(room);
      if (room === this.active) this._onChanged(message);
    });
    on("read", (name) => this._onReadMoved(name));
    on("mentions", () => this._renderMentions());
    on("mention", (name, message) => this._notifyMention(name, message));
    on("pending", (room) => room === this.active && this._renderPending());
    on("members", (room) => room === this.active && this._scheduleMembers());
    on("typing", (room) => room === this.active && this._renderTyping());
    on("values", (room, topic) => room === this.active && this._scheduleValues(topic));
    on("search", (id, results) => id === this._search && this._showResults(results));
    on("searchFailed", (id) => {
      if (id !== this._search) return;
      this._search = null;
      this.searchPanel.hidden = true;
    });
    on("error", (frame) => this._onError(frame));
    on("undecodable", (reason) => this._showError(reason));

    const listen = (node, type, handler) => node.addEventListener(type, handler);
    // Keys typed in the chat belong to the chat, never to notebook shortcuts.
    for (const type of ["keydown", "keyup", "keypress"]) {
      listen(this.root, type, (event) => event.stopPropagation());
    }
    listen(this.composer, "keydown", (event) => {
      if (this._autocompleteKey(event)) return;
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this._send();
      } else if (event.key === "ArrowUp" && this.composer.value === "" && !event.shiftKey) {
        if (this._editLast()) event.preventDefault();
      } else if (event.key === "Escape" && (this._replyTo !== null || this._thread !== null)) {
        event.preventDefault();
        if (this._thread !== null) this._closeThread();
        else this._setReplyTo(null);
      }
    });
    for (const container of [this.list, this.threadList]) {
      listen(container, "click", (event) => this._onAction(event, container === this.list ? "list" : "thread"));
      listen(container, "keydown", (event) => this._onMessageKey(event));
      listen(container, "input", (event) => {
        if (this._open && event.target.classList.contains("jce-edit-input")) this._open.draft = event.target.value;
      });
    }
    listen(this.root, "click", (event) => {
      // A click anywhere but in the reaction picker (or on its button) closes it.
      if (this._open && this._open.kind === "pick" && !event.target.closest(".jce-picker, [data-action='react']")) {
        this._closeOpen();
      }
      // And one anywhere but in the mentions (or on their button) closes them.
      if (!this.mentionsPanel.hidden && !event.target.closest(".jce-mentions, .jce-mentions-toggle")) {
        this._showMentions(false);
      }
      // And the search results, for a click outside them and the search box.
      if (!this.searchPanel.hidden && !event.target.closest(".jce-search, .jce-search-input")) this._closeSearch();
    });
    listen(this.mentionsToggle, "click", () => this._showMentions(this.mentionsPanel.hidden));
    listen(this.searchInput, "keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) {
        event.preventDefault();
        this._runSearch();
      } else if (event.key === "Escape" && !this.searchPanel.hidden) {
        event.preventDefault();
        this._closeSearch();
      }
    });
    listen(this.searchClose, "click", () => this._closeSearch());
    listen(this.searchPanel, "keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this._closeSearch();
        this.searchInput.focus();
      }
    });
    listen(this.searchList, "click", (event) => {
      const entry = event.target.closest("[data-room][data-seq]");
      if (entry) this._openResult(entry.dataset.room, Number(entry.dataset.seq));
    });
    listen(this.root, "keydown", (event) => {
      // Ctrl/Cmd+F in the chat searches the chat.
      if ((event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey && event.key.toLowerCase() === "f") {
        event.preventDefault();
        this.searchInput.focus();
        this.searchInput.select();
      }
    });
    listen(this.exportButton, "click", () => this._export());
    listen(this.mentionsPanel, "keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this._showMentions(false);
        this.mentionsToggle.focus();
      }
    });
    listen(this.mentionsList, "click", (event) => {
      const entry = event.target.closest("[data-room][data-seq]");
      if (entry) this._openMention(entry.dataset.room, Number(entry.dataset.seq));
    });
    listen(this.notifyButton, "click", async () => {
      await askToNotify();
      this._renderNotify();
    });
    // The autocomplete keeps the composer's focus: a click picks, a blur closes.
    listen(this.acList, "mousedown", (event) => event.preventDefault());
    listen(this.acList, "click", (event) => {
      const option = event.target.closest("[data-username]");
      if (option) this._pickMention(option.dataset.username);
    });
    listen(this.composer, "blur", () => this._closeAutocomplete());
    listen(this.composer, "click", () => this._updateAutocomplete());
    listen(this.composer, "keyup", (event) => {
      if (["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) this._updateAutocomplete();
    });
    listen(this.replyCancel, "click", () => {
      if (this._thread !== null) this._closeThread();
      else this._setReplyTo(null);
      this.composer.focus();
    });
    listen(this.threadClose, "click", () => this._closeThread());
    listen(this.composer, "input", () => {
      this._onInput();
      this._updateAutocomplete();
    });
    listen(this.sendButton, "click", () => this._send());
    // A pasted image or a dropped file is shared (upload.js); pasted text stays text.
    listen(this.composer, "paste", (event) => this._share(event, event.clipboardData));
    listen(this.composer, "dragover", (event) => {
      if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) event.preventDefault();
    });
    listen(this.composer, "drop", (event) => this._share(event, event.dataTransfer));
    listen(this.joinInput, "keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        const name = this.joinInput.value.trim();
        if (name) {
          this.openRoom(name);
          this.joinInput.value = "";
        }
      }
    });
    listen(this.earlierButton, "click", () => this._loadEarlier());
    listen(this.moreMembers, "click", () => {
      if (this.active && this.conn.loadMembers(this.active.name) !== null) this.moreMembers.disabled = true;
    });
    listen(this.laterButton, "click", () => this._loadLater());
    listen(this.newButton, "click", () => (this._anchor === null ? this._scrollToBottom() : this._showLive()));
    listen(this.retryButton, "click", () => this.conn.retryNow());
    listen(this.scroller, "scroll", () => {
      this._scheduleRead();
      const live = this._anchor === null;
      const atBottom = this._atBottom();
      if (atBottom) {
        this._stuck = true;
        this._scrolledTo = this.scroller.scrollTop;
      } else if (this.scroller.scrollTop < this._scrolledTo - NEAR_EDGE_PX) {
        this._stuck = false; // the person scrolled up: new messages no longer pull the view down
        this._sticking = false;
      } else if (!this._sticking) this._stuck = false;
      if (live && atBottom && this._windowAtEnd()) this.newButton.classList.remove("jce-show");
      if (this.scroller.scrollTop < NEAR_EDGE_PX) this._loadEarlier();
      if (atBottom && live) this._extendDown(WINDOW_STEP);
      else if (atBottom) this._loadLater();
    });
  }

  _startRename() {
    const me = this.conn.user;
    this.renameInput.value = me ? nameOf(me) : "";
    this.renameInput.hidden = false;
    this.renameButton.hidden = true;
    this.stateLabel.hidden = true;
    this.renameInput.focus();
    this.renameInput.select();
  }

  async _finishRename() {
    try {
      await this._rename(this.renameInput.value);
      this._endRename();
    } catch (err) {
      this._showError(err.message);
    }
  }

  _endRename() {
    this.renameInput.hidden = true;
    this.renameButton.hidden = !this._rename;
    this.stateLabel.hidden = false;
  }

  /** Labels for the room's members (and `extra`), told apart where names collide. */
  _labels(extra = []) {
    const room = this.active;
    return labelsFor([...(room ? room.members.values() : []), ...extra]);
  }

  /** Remove this window; the rooms only it showed are left, the connection stays. */
  destroy() {
    for (const stop of this._unsubscribe) stop();
    document.removeEventListener("visibilitychange", this._onVisibility);
    if (this._intersection) this._intersection.disconnect();
    clearTimeout(this._readTimer);
    reportMentions(this, 0);
    this._stopTyping();
    for (const name of this.tabs.keys()) this.conn.leave(name);
    this.tabs.clear();
    clearTimeout(this._errorTimer);
    this.uploads.destroy();
    cancelAnimationFrame(this._valuesFrame);
    cancelAnimationFrame(this._membersFrame);
    cancelAnimationFrame(this._fillFrame);
    cancelAnimationFrame(this._settleFrame);
    clearTimeout(this._fillTimer);
    this._resizeObserver.disconnect();
    this.root.remove();
  }

  // ---- rooms ---------------------------------------------------------------------

  openRoom(name) {
    if (!name) return;
    if (!this.tabs.has(name)) {
      const room = this.conn.join(name);
      const label = h("span", { class: "jce-tab-name", text: `#${name}` });
      const badge = h("span", { class: "jce-badge", title: "unread messages" });
      const mentionBadge = h("span", { class: "jce-badge-mention", title: "unread mentions of you" });
      const close = h("span", { class: "jce-tab-close", title: `Leave #${name}`, text: "×", role: "button" });
      const tab = h("button", { class: "jce-tab", type: "button", role: "tab", "data-room": name }, label, badge, mentionBadge, close);
      tab.addEventListener("click", (event) => {
        if (event.target === close) this.closeRoom(name);
        else this._activate(room);
      });
      this.tabList.append(tab);
      this.tabs.set(name, { tab, badge, mentionBadge });
    }
    this._activate(this.conn.rooms.get(name));
  }

  closeRoom(name) {
    const entry = this.tabs.get(name);
    if (!entry) return;
    entry.tab.remove();
    this.tabs.delete(name);
    this.conn.leave(name);
    if (this.active && this.active.name === name) {
      const next = this.tabs.keys().next();
      this.active = null;
      this._replyTo = this._thread = this._open = this._jump = this._anchor = null;
      this._missed = 0;
      if (this._exporting === name) this._exporting = null;
      if (!next.done) this._activate(this.conn.rooms.get(next.value));
      else this._renderAll();
    }
  }

  _activate(room) {
    this._stopTyping();
    if (room !== this.active) {
      this._replyTo = null;
      this._thread = null;
      this._open = null;
      this._jump = null;
      this._anchor = null; // a room comes back at its newest messages
      this._missed = 0;
    }
    const previous = this.active;
    this.active = room;
    for (const [name, { tab }] of this.tabs) {
      const selected = name === room.name;
      tab.classList.toggle("jce-active", selected);
      tab.setAttribute("aria-selected", String(selected));
    }
    // A room you come to places its "new messages" line afresh.
    this._line = undefined;
    this._attending = this._attended();
    this._renderAll();
    if (previous && previous !== room) this._renderBadge(previous);
    this._renderBadge(room);
    this._scheduleRead();
    this.composer.focus({ preventScroll: true });
  }

  /** A tab's badges: messages you have not read (by your read marker) and mentions of you. */
  _renderBadge(room) {
    const entry = room && this.tabs.get(room.name);
    if (!entry) return;
    const me = this.conn.user ? this.conn.user.username : "";
    let unread = "";
    // The room you are reading at its end is being marked read: no count to flash.
    const reading = room === this.active && this._looking() && this._anchor === null && this._stuck;
    if (room.read !== null && !reading) {
      const marker = Math.max(room.read, room.readSent);
      unread = badgeText(unreadCount(room.messages, marker, me, room.ranges));
    }
    const mentions = mentionCount(this.conn.mentions, room.name);
    setText(entry.badge, unread);
    setText(entry.mentionBadge, mentions ? `@${mentions}` : "");
    const said = [unread && `${unread} unread`, mentions && `${mentions} mentioning you`].filter(Boolean);
    const title = said.length ? `#${room.name}: ${said.join(", ")}` : `#${room.name}`;
    if (entry.tab.title !== title) entry.tab.title = title;
  }

  _renderBadges() {
    for (const name of this.tabs.keys()) this._renderBadge(this.conn.rooms.get(name));
  }

  _renderAll() {
    this._renderMembers(); // first: reactions name the members who reacted
    this._renderMessages(true);
    this._renderTyping();
    this._scheduleValues(undefined);
    this._showState(this.conn.state);
  }

  // ---- messages ------------------------------------------------------------------

  /** A message's list item; one that cannot be drawn shows as a placeholder instead. */
  _messageNode(message, previous, where = "list") {
    try {
      const node = this._drawMessage(message, previous, where);
      if (where === "list") {
        const line = message.seq === this._line;
        this._drawnWith.set(node, { room: this.active, message, previous: previous ? previous.seq : null, line });
      }
      return node;
    } catch (err) {
      console.error("jupyter-chat-ext: a message could not be shown", err);
      const item = h("li", { class: "jce-msg jce-msg-broken", "data-seq": String(message && message.seq) });
      item.append(h("div", { class: "jce-body", text: "(a message that could not be shown)" }));
      return item;
    }
  }

  _isOwn(message) {
    const me = this.conn.user;
    return Boolean(me && message.user && message.user.username === me.username);
  }

  /** `message`'s item in the list (`where`: "list") or in the thread view ("thread"). */
  _drawMessage(message, previous, where) {
    const me = this.conn.user;
    const room = this.active;
    const own = this._isOwn(message);
    this._people.set(message.user.username, message.user);
    const afterLine = where === "list" && message.seq === this._line;
    const grouped =
      !afterLine &&
      previous &&
      previous.user.username === message.user.username &&
      Boolean(previous.user.kernel) === Boolean(message.user.kernel) &&
      message.ts - previous.ts < GROUP_SECONDS;
    const item = h("li", { class: "jce-msg", "data-seq": String(message.seq), "data-username": message.user.username });
    if (own) item.classList.add("jce-own");
    if (afterLine) item.append(this.unreadLine);
    if (me && !own && !message.deleted && mentionsUser(message, me.username)) item.classList.add("jce-mentioned");
    if (grouped) item.classList.add("jce-cont");
    else {
      const time = h("time", { class: "jce-time", text: clock(message.ts), title: DATE_TIME.format(new Date(message.ts * 1000)) });
      const label = this._labels([message.user]).get(message.user.username);
      const title = `${message.user.username}${message.user.kernel ? " · sent from their kernel" : ""}`;
      const author = h("span", { class: "jce-author", text: label + (own ? " (you)" : ""), title });
      const head = h("div", { class: "jce-head" }, author);
      if (message.user.kernel) head.append(h("span", { class: "jce-kernel", text: "kernel", title: "sent from a kernel" }));
      head.append(time);
      item.append(avatar(message.user), head);
    }
    const shown = displayed(message, room ? room.changesOf(message.seq) : [], me ? me.username : "");
    const open = this._open && this._open.seq === message.seq && this._open.where === where ? this._open : null;
    // In a thread, its replies need no quote of the message the thread is about.
    if (Number.isSafeInteger(message.reply_to) && !(where === "thread" && message.reply_to === this._thread)) {
      item.append(this._quoteNode(message.reply_to));
    }
    if (shown.deleted) {
      item.classList.add("jce-msg-deleted");
      item.append(h("div", { class: "jce-body jce-deleted", text: "message deleted" }));
    } else if (open && open.kind === "edit") {
      item.append(editorNode(open.draft));
    } else {
      const body = h("div", { class: "jce-body" });
      body.append(renderMarkdown(shown.body));
      // `@username` shows as the person's name, for those the server found mentioned.
      const mentioned = Array.isArray(message.mentions) ? message.mentions.filter((u) => typeof u === "string") : [];
      if (mentioned.length && !shown.saving) highlightMentions(body, new Set(mentioned), this._nameOfUsername(), me ? me.username : "");
      if (shown.saving) body.classList.add("jce-saving");
      item.append(body);
      if (message.attachment) item.append(attachmentNode(message.attachment, message.seq, this.http));
    }
    const foot = footNode(message, shown, me ? me.username : "", this._labelOf(shown.reactions));
    if (foot) item.append(foot);
    if (open && open.kind === "confirm" && !shown.deleted) item.append(confirmNode());
    if (!shown.deleted && !shown.deleting) {
      item.append(actionsNode(own, own || this.conn.moderator));
      if (open && open.kind === "pick") item.append(pickerNode(shown, me ? me.username : ""));
    }
    if (shown.deleting) item.classList.add("jce-deleting");
    return item;
  }

  /** The quote of message `parentSeq` above a reply to it. */
  _quoteNode(parentSeq) {
    const parent = this.active ? messageAt(this.active, parentSeq) : null;
    return quoteNode(parentSeq, parent, parent ? this._labels([parent.user]).get(parent.user.username) : "");
  }

  /** How to name a person by username: members and authors seen, told apart; else the username. */
  _nameOfUsername() {
    const labels = this._labels([...this._people.values()]);
    return (username) => labels.get(username) || username;
  }

  /** How to name who reacted: members and authors seen, told apart; else the username. */
  _labelOf(reactions) {
    if (reactions.length === 0) return (username) => username;
    const labels = this._labels([...this._people.values()]);
    return (username) => labels.get(username) || username;
  }

  // ---- segments: the list shows the live messages or an island (segments.js) -----------

  /** The index in the active room's `ranges` of the segment shown (the live one unless an island is). */
  _segmentIndex() {
    const room = this.active;
    if (!room) return -1;
    const island = this._anchor === null ? -1 : rangeIndexOf(room.ranges, this._anchor);
    return island >= 0 ? island : room.ranges.length - 1;
  }

  /** The messages of the segment shown, in seq order. */
  _shownMessages() {
    const room = this.active;
    return room ? messagesIn(room.messages, room.ranges[this._segmentIndex()]) : [];
  }

  /** The message before `message` in its segment (what it may continue the group of), or null. */
  _previous(message) {
    const room = this.active;
    const index = indexOfSeq(room.messages, message.seq);
    const previous = index > 0 ? room.messages[index - 1] : null;
    if (!previous || rangeIndexOf(room.ranges, previous.seq) !== rangeIndexOf(room.ranges, message.seq)) return null;
    return previous;
  }

  /** An island that grew into the live segment is the live segment. */
  _settleAnchor() {
    const room = this.active;
    if (this._anchor === null || !room) return;
    const index = rangeIndexOf(room.ranges, this._anchor);
    if (index < 0 || index === room.ranges.length - 1) {
      this._anchor = null;
      this._missed = 0;
    }
  }

  /** Show the segment holding message `seq` (an island, or the live one), drawn around it. */
  _showSegment(seq) {
    const room = this.active;
    const index = rangeIndexOf(room.ranges, seq);
    this._anchor = index >= 0 && index < room.ranges.length - 1 ? seq : null;
    if (this._anchor === null) this._missed = 0;
    this._renderMessages(false, seq);
  }

  /** Back to the newest messages (the live segment), at their end. */
  _showLive() {
    this._anchor = null;
    this._missed = 0;
    this._renderMessages(true);
    this._scheduleRead();
  }

  /** How many messages a history request asks for. */
  _page() {
    return (this.conn.limits && this.conn.limits.history_page_size) || 100;
  }

  /** Draw held messages above the window, else ask the server for the page before the segment. */
  _loadEarlier() {
    if (this._extendUp(WINDOW_STEP)) return;
    const drawn = this._windowSeqs();
    if (this.active && drawn) this.conn.loadEarlier(this.active.name, 50, drawn[0]);
  }

  /** Draw held messages below the window, else (an island) ask for the messages after it. */
  _loadLater() {
    if (this._extendDown(WINDOW_STEP)) return;
    const drawn = this._windowSeqs();
    if (this.active && this._anchor !== null && drawn) this.conn.loadLater(this.active.name, drawn[1], this._page());
  }

  // ---- the window: the part of the segment shown that is in the DOM ---------------------

  /** The first and last messages held of the segment shown, or nulls. */
  _segmentEnds() {
    const room = this.active;
    const range = room && room.ranges[this._segmentIndex()];
    if (!range) return [null, null];
    const lo = firstAtLeast(room.messages, range[0]);
    const hi = firstAtLeast(room.messages, range[1] + 1) - 1;
    return lo <= hi ? [room.messages[lo], room.messages[hi]] : [null, null];
  }

  /** The seqs of the first and last items drawn, or null (none). */
  _windowSeqs() {
    const first = this.list.firstElementChild;
    return first ? [Number(first.dataset.seq), Number(this.list.lastElementChild.dataset.seq)] : null;
  }

  /** Whether the items drawn reach the newest message of the segment shown. */
  _windowAtEnd() {
    const [, last] = this._segmentEnds();
    const drawn = this._windowSeqs();
    return !last || (drawn !== null && drawn[1] >= last.seq);
  }

  /**
   * Draw the segment shown (a new tab, a reset room, a new identity, another segment):
   * a screenful at its end (or around message `around`), then filled in steps. A node
   * whose message did not change is kept (a room joined again after a reconnect).
   */
  _renderMessages(toBottom, around = null) {
    const room = this.active;
    this._settleAnchor();
    const messages = this._shownMessages();
    if (this._open && !(room && messageAt(room, this._open.seq))) this._open = null;
    this._line = this._linePlace();
    if (this._line === null || this._line === undefined) this.unreadLine.remove();
    const me = this._identity();
    if (me !== this._drawnAs) this._drawnWith = new WeakMap(); // "you" changed: draw every node again
    this._drawnAs = me;
    let start = Math.max(0, messages.length - WINDOW_FIRST);
    let end = messages.length;
    const drawn = this._windowSeqs();
    if (around !== null) {
      start = Math.max(0, Math.min(firstAtLeast(messages, around) - (WINDOW_FIRST >> 1), start));
      end = Math.min(messages.length, start + WINDOW_FIRST);
    } else if (room === this._drawnRoom && toBottom && drawn && start < end && drawn[1] >= messages[start].seq) {
      // The same room drawn again at its end (a reconnect): the items drawn stay drawn.
      start = Math.max(0, end - WINDOW_MAX, Math.min(start, firstAtLeast(messages, drawn[0])));
    }
    this._drawnRoom = room;
    this._drawUp = 0;
    const nodes = messages.slice(start, end).map((m, i) => {
      const previous = messages[start + i - 1] || null;
      return this._reusedNode(m, previous) || this._messageNode(m, previous);
    });
    this._placeNodes(nodes);
    this.pendingList.replaceChildren();
    this._pendingNodes.clear();
    this._renderPending();
    this._renderThread();
    this._renderReplyBar();
    this._updateEdges();
    if (toBottom) this._toBottom();
    this._fillSoon();
  }

  /** Who the list is drawn for: the user and what they may do (a moderator deletes any message). */
  _identity() {
    return JSON.stringify([this.conn.user, this.conn.moderator]);
  }

  /** The node drawn for `message` after `previous`, if it still shows what it would now; else null. */
  _reusedNode(message, previous) {
    const node = this._nodes.get(message.seq);
    const drawn = node && this._drawnWith.get(node);
    if (!drawn || drawn.room !== this.active || drawn.line || message.seq === this._line) return null;
    if (drawn.previous !== (previous ? previous.seq : null)) return null;
    if (this._open && this._open.seq === message.seq) return null;
    if (drawn.message !== message && JSON.stringify(drawn.message) !== JSON.stringify(message)) return null;
    return this.active.changesOf(message.seq).length ? null : node;
  }

  /** Make the list hold `nodes` (in seq order), moving only what must move. */
  _placeNodes(nodes) {
    placeChildren(this.list, nodes);
    this._nodes = new Map(nodes.map((node) => [Number(node.dataset.seq), node]));
  }

  /**
   * Fill the list toward WINDOW_FILL items (or draw the rest of a page loaded above it,
   * `_drawUp` messages), a step per task once the frame is painted.
   */
  _fillSoon() {
    if (this._fillFrame || this._fillTimer) return;
    this._fillFrame = requestAnimationFrame(() => {
      this._fillFrame = 0;
      this._fillTimer = setTimeout(() => {
        this._fillTimer = 0;
        if (!this.active) return;
        if (this._drawUp > 0) {
          const step = Math.min(WINDOW_STEP, this._drawUp);
          this._drawUp -= step;
          if (this._extendUp(step)) this._fillSoon();
          else this._drawUp = 0;
          return;
        }
        if (this._nodes.size >= WINDOW_FILL) return;
        const step = Math.min(WINDOW_STEP, WINDOW_FILL - this._nodes.size);
        if (this._extendDown(step) || this._extendUp(step)) this._fillSoon();
      }, 0);
    });
  }

  /** Draw up to `n` held messages of the segment above the window; whether any were. */
  _extendUp(n) {
    const first = this.list.firstElementChild;
    const [segmentFirst] = this._segmentEnds();
    if (!first || !segmentFirst) return false;
    const messages = this.active.messages;
    const index = indexOfSeq(messages, Number(first.dataset.seq));
    const lo = indexOfSeq(messages, segmentFirst.seq);
    if (index <= lo) return false;
    const start = Math.max(lo, index - n);
    this._prepend(messages.slice(start, index), first, start > lo ? messages[start - 1] : null);
    this._trim();
    this._updateEdges();
    return true;
  }

  /** Draw up to `n` held messages of the segment below the window; whether any were. */
  _extendDown(n) {
    const last = this.list.lastElementChild;
    const [, segmentLast] = this._segmentEnds();
    if (!last || !segmentLast) return false;
    const messages = this.active.messages;
    const index = indexOfSeq(messages, Number(last.dataset.seq));
    const hi = indexOfSeq(messages, segmentLast.seq);
    if (index < 0 || index >= hi) return false;
    this._append(messages.slice(index + 1, Math.min(hi, index + n) + 1), messages[index]);
    this._trim();
    this._updateEdges();
    return true;
  }

  /** Draw `newer` (the segment's messages after the last item, from `previous` on) below it. */
  _append(newer, previous) {
    const nodes = newer.map((m, i) => this._messageNode(m, i ? newer[i - 1] : previous));
    newer.forEach((m, i) => this._nodes.set(m.seq, nodes[i]));
    this.list.append(...nodes);
  }

  /**
   * Past WINDOW_MAX items (and a step), drop those a screen or more out of view: above
   * it (the view kept where it is) or below it. They are drawn again when scrolled to.
   */
  _trim() {
    const excess = this._nodes.size - WINDOW_MAX;
    if (excess < WINDOW_STEP) return;
    const view = this.scroller.getBoundingClientRect();
    const items = [...this.list.children];
    let top = 0;
    while (top < excess && items[top].getBoundingClientRect().bottom < view.top - view.height) top += 1;
    let bottom = 0;
    while (top + bottom < excess && items[items.length - 1 - bottom].getBoundingClientRect().top > view.bottom + view.height) bottom += 1;
    if (!top && !bottom) return;
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    for (const node of [...items.slice(0, top), ...items.slice(items.length - bottom)]) {
      node.remove();
      this._nodes.delete(Number(node.dataset.seq));
    }
    if (top) this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    if (this._stuck) this._scrolledTo = this.scroller.scrollTop;
  }

  /**
   * A history page or window came (`added`: the messages it added, anywhere): the
   * segment shown may have grown at either end, into another one, or into the live one.
   * A page loaded above the window (at its segment's start) is prepended (its newest
   * step) keeping what is on screen where it was; what it added right after the window is
   * appended (half a window's worth at most).
   */
  _onLoaded(added) {
    this._settleAnchor();
    const drawn = this._windowSeqs();
    if (!drawn) {
      if (this._shownMessages().length) this._renderMessages(this._anchor === null && this._jump === null);
    } else {
      const messages = this.active.messages;
      const [segmentFirst, segmentLast] = this._segmentEnds();
      const fresh = new Set(added.map((m) => m.seq));
      const firstIndex = indexOfSeq(messages, drawn[0]);
      const lo = segmentFirst ? indexOfSeq(messages, segmentFirst.seq) : firstIndex;
      // (a step now, the rest in steps after: no long task for a page)
      const older = messages.slice(lo, firstIndex);
      if (older.length && older.every((m) => fresh.has(m.seq))) {
        const start = Math.max(0, older.length - WINDOW_STEP);
        this._prepend(older.slice(start), this.list.firstElementChild, older[start - 1] || null);
        this._drawUp = start;
        this._fillSoon();
      }
      const lastIndex = indexOfSeq(messages, drawn[1]);
      const hi = segmentLast ? indexOfSeq(messages, segmentLast.seq) : lastIndex;
      // Below it: what this load added right after it (an island growing toward the newest).
      if (lastIndex >= 0 && hi > lastIndex && fresh.has(messages[lastIndex + 1].seq)) this._append(messages.slice(lastIndex + 1, Math.min(hi, lastIndex + WINDOW_MAX / 2) + 1), messages[lastIndex]);
    }
    // Replies shown may quote messages that only now arrived.
    this._redrawQuotes(added.map((m) => m.seq));
    this._trim();
    this._renderPending();
    this._updateEdges();
    this._updateLine();
    this._continueJump();
  }

  /** Put `older` (messages before node `first`, the first after `previous`) above it, the view staying put. */
  _prepend(older, first, previous) {
    const before = this.scroller.scrollHeight - this.scroller.scrollTop;
    const nodes = older.map((m, i) => this._messageNode(m, i ? older[i - 1] : previous));
    older.forEach((m, i) => this._nodes.set(m.seq, nodes[i]));
    this.list.prepend(...nodes);
    // The first message shown so far may now continue the last older one's group.
    const next = messageAt(this.active, Number(first.dataset.seq));
    if (next) {
      const node = this._messageNode(next, older.at(-1));
      first.replaceWith(node);
      this._nodes.set(next.seq, node);
    }
    this.scroller.scrollTop = this.scroller.scrollHeight - before;
  }

  /** Add the messages sent since, and remove those acknowledged or refused. */
  _renderPending() {
    const pending = this.active ? this.active.pending : new Map();
    for (const [id, node] of this._pendingNodes) {
      if (!pending.has(id)) {
        node.remove();
        this._pendingNodes.delete(id);
      }
    }
    for (const [id, frame] of pending) {
      if (this._pendingNodes.has(id)) continue;
      const item = h("li", { class: "jce-msg jce-own jce-cont jce-sending", title: "sending…", "data-id": id });
      if (Number.isSafeInteger(frame.reply_to)) item.append(this._quoteNode(frame.reply_to));
      const text = h("div", { class: "jce-body" });
      text.append(renderMarkdown(frame.body));
      if (frame.attachment) text.append(h("span", { class: "jce-att-sending", text: "sharing a file…" }));
      item.append(text);
      this.pendingList.append(item);
      this._pendingNodes.set(id, item);
    }
    this._updateEdges();
  }

  _updateEdges() {
    const room = this.active;
    const empty = !room || (room.messages.length === 0 && room.pending.size === 0);
    setText(this.emptyNote, room ? "No messages yet. Say hello!" : "Join a room to start chatting.");
    this.emptyNote.hidden = !empty;
    const range = room ? room.ranges[this._segmentIndex()] : undefined;
    const [segmentFirst] = this._segmentEnds();
    const drawn = this._windowSeqs();
    const heldAbove = Boolean(segmentFirst && drawn && drawn[0] > segmentFirst.seq);
    this.earlierButton.hidden = !heldAbove && (!range || range[0] <= 1 || room.messages.length === 0);
    // Under an island: more toward the newest, and the way back to them. Your messages
    // on their way show under the newest ones, where they will be.
    const island = this._anchor !== null;
    this.laterButton.hidden = !island;
    this.pendingList.hidden = island;
    if (island) {
      setText(this.newButton, this._missed ? `${this._missed} new · Jump to newest ↓` : "Jump to newest ↓");
      this.newButton.classList.add("jce-show");
    } else {
      setText(this.newButton, "New messages ↓");
    }
  }

  _onMessage(room, message) {
    if (room !== this.active) {
      this._renderBadge(room);
      return;
    }
    if (this._thread !== null && message.reply_to === this._thread) {
      const replies = repliesTo(room, this._thread);
      this.threadList.append(this._messageNode(message, replies.at(-2), "thread"));
    }
    if (this._anchor !== null) {
      // An island is shown: the message joins the live segment, and the button says so.
      this._missed += 1;
      this._updateEdges();
      this._updateLine();
      this._renderBadge(room);
      return;
    }
    const own = this._isOwn(message);
    const previous = this._previous(message);
    if (previous && !this._nodes.has(previous.seq)) {
      // The items drawn end before the newest messages: this one is drawn when they are.
      if (own) this._scrollToBottom();
      else this.newButton.classList.add("jce-show");
    } else {
      // No layout is read here (a busy room brings many messages a frame): the view
      // follows them, and the list is trimmed, once per frame.
      const node = this._messageNode(message, previous);
      this.list.append(node);
      this._nodes.set(message.seq, node);
      if (this._stuck || own) this._sticking = true;
      else this.newButton.classList.add("jce-show");
      this._settleSoon();
    }
    this._updateEdges();
    this._updateLine();
    this._renderBadge(room);
    this._scheduleRead();
  }

  /** A held message changed (or a change of yours to it is on its way): redraw it. */
  _onChanged(message) {
    const room = this.active;
    const current = messageAt(room, message.seq);
    if (!current) return;
    if (this._open && this._open.seq === current.seq && current.deleted) this._open = null;
    const stick = this._anchor === null && this._atBottom();
    // Redrawing replaces nodes: the focus, if it was in an open editor, goes back there.
    const focused = document.activeElement;
    const refocus = Boolean(this._open && focused && focused.closest && focused.closest(".jce-editor, .jce-confirm, .jce-picker"));
    const node = this._nodes.get(current.seq);
    if (node) {
      const fresh = this._messageNode(current, this._previous(current));
      node.replaceWith(fresh);
      this._nodes.set(current.seq, fresh);
    }
    if (this._thread === current.seq) this._renderThread();
    else {
      const threadNode = this.threadList.querySelector(`li[data-seq="${current.seq}"]`);
      if (threadNode) {
        const replies = repliesTo(room, this._thread);
        const index = replies.findIndex((m) => m.seq === current.seq);
        threadNode.replaceWith(this._messageNode(current, replies[index - 1], "thread"));
      }
    }
    this._redrawQuotes([current.seq]);
    if (this._replyTo === current.seq) this._renderReplyBar();
    if (refocus && !focused.isConnected) this._focusOpen();
    if (stick) this._scrollToBottom();
  }

  /** Redraw the quotes of the messages `seqs` (in replies, pending replies and the thread). */
  _redrawQuotes(seqs) {
    const wanted = new Set(seqs);
    if (!wanted.size) return;
    for (const container of [this.list, this.pendingList, this.threadList]) {
      for (const quote of container.querySelectorAll(".jce-quote[data-parent]")) {
        const seq = Number(quote.dataset.parent);
        if (wanted.has(seq)) quote.replaceWith(this._quoteNode(seq));
      }
    }
  }

  /** Redraw message `seq` wherever it shows (after a local state change: editing, ...). */
  _redraw(seq) {
    const message = this.active && messageAt(this.active, seq);
    if (message) this._onChanged(message);
  }

  // ---- actions on messages -----------------------------------------------------------

  _onAction(event, where) {
    const target = event.target.closest("[data-action]");
    const item = event.target.closest("li.jce-msg[data-seq]");
    if (!target || !item || !this.active) return;
    const seq = Number(item.dataset.seq);
    const message = messageAt(this.active, seq);
    if (!message) return;
    const action = target.dataset.action;
    if (action === "reply") {
      this._setReplyTo(seq);
      this.composer.focus();
    } else if (action === "react") {
      const picking = this._open && this._open.kind === "pick" && this._open.seq === seq;
      this._setOpen(picking ? null : { kind: "pick", seq, where });
    } else if (action === "reaction") {
      this._toggleReaction(message, target.dataset.emoji);
      if (this._open && this._open.kind === "pick") this._closeOpen();
    } else if (action === "edit") {
      this._startEdit(message, where);
    } else if (action === "save-edit") {
      this._saveEdit();
    } else if (action === "cancel-edit" || action === "cancel-delete") {
      this._closeOpen();
      this.composer.focus();
    } else if (action === "delete") {
      this._setOpen({ kind: "confirm", seq, where });
    } else if (action === "confirm-delete") {
      this._open = null;
      this.conn.deleteMessage(this.active.name, seq);
      this.composer.focus();
    } else if (action === "thread") {
      this._openThread(seq);
    } else if (action === "quote") {
      this._jumpTo(Number(target.dataset.parent));
    }
  }

  _onMessageKey(event) {
    if (!this._open) return;
    const editing = event.target.classList.contains("jce-edit-input");
    if (editing && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      this._saveEdit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      this._closeOpen();
      this.composer.focus();
    }
  }

  /** Open (or with null, close) the editor, the delete confirmation or the picker. */
  _setOpen(open) {
    const previous = this._open;
    this._open = open;
    if (previous && (!open || previous.seq !== open.seq || previous.where !== open.where)) this._redraw(previous.seq);
    if (open) {
      this._redraw(open.seq);
      this._focusOpen();
    }
  }

  _closeOpen() {
    this._setOpen(null);
  }

  /** Put the focus where the open editor, confirmation or picker wants it. */
  _focusOpen() {
    if (!this._open) return;
    const container = this._open.where === "thread" ? this.threadList : this.list;
    const item = container.querySelector(`li[data-seq="${this._open.seq}"]`);
    if (!item) return;
    const target = item.querySelector(".jce-edit-input, .jce-confirm-cancel, .jce-pick");
    if (!target || target === document.activeElement) return;
    target.focus({ preventScroll: true });
    if (target.classList.contains("jce-edit-input")) target.setSelectionRange(target.value.length, target.value.length);
  }

  _toggleReaction(message, emoji) {
    const me = this.conn.user;
    if (!me || !emoji || message.deleted) return;
    const shown = displayed(message, this.active.changesOf(message.seq), me.username);
    if (hasReacted(shown, emoji, me.username)) this.conn.unreact(this.active.name, message.seq, emoji);
    else this.conn.react(this.active.name, message.seq, emoji);
  }

  _startEdit(message, where) {
    const me = this.conn.user;
    if (!this._isOwn(message) || message.deleted) return;
    const shown = displayed(message, this.active.changesOf(message.seq), me.username);
    this._setOpen({ kind: "edit", seq: message.seq, where, draft: shown.body });
  }

  /** Up arrow in an empty composer: edit your last message. Returns whether it did. */
  _editLast() {
    const me = this.conn.user;
    if (!this.active || !me) return false;
    const message = lastOwnMessage(this.active, me.username);
    if (!message) return false;
    const inThread = this._thread !== null && (message.seq === this._thread || message.reply_to === this._thread);
    if (this._thread !== null && !inThread) this._closeThread();
    if (!inThread && !this._nodes.has(message.seq)) this._showSegment(message.seq);
    this._startEdit(message, inThread ? "thread" : "list");
    if (!inThread) {
      const node = this._nodes.get(message.seq);
      if (node) this._reveal(node, false);
    }
    return true;
  }

  _saveEdit() {
    const open = this._open;
    if (!open || open.kind !== "edit") return;
    const message = messageAt(this.active, open.seq);
    const body = open.draft;
    if (!message) return this._closeOpen();
    if (!body.trim()) {
      this._showError("A message cannot be empty: delete it instead.");
      return;
    }
    const limit = this.conn.limits && this.conn.limits.max_message_size;
    const size = new TextEncoder().encode(body).length;
    if (limit && size > limit) {
      this._showError(`This message is ${size} bytes; the limit is ${limit}.`);
      return;
    }
    const me = this.conn.user;
    const current = displayed(message, this.active.changesOf(open.seq), me ? me.username : "").body;
    this._open = null;
    if (body !== current) this.conn.edit(this.active.name, open.seq, body);
    this._redraw(open.seq);
    this.composer.focus();
  }

  // ---- replies and threads -----------------------------------------------------------

  _setReplyTo(seq) {
    this._replyTo = seq;
    this._renderReplyBar();
  }

  _renderReplyBar() {
    const seq = this._replyTo;
    this.replyBar.hidden = seq === null || !this.active;
    if (this.replyBar.hidden) return;
    const parent = messageAt(this.active, seq);
    const what = this._thread === seq ? "Replying in the thread of" : "Replying to";
    if (!parent) {
      this.replyText.replaceChildren(`${what} an earlier message`);
      return;
    }
    const label = this._labels([parent.user]).get(parent.user.username);
    const text = parent.deleted ? "message deleted" : excerpt(parent.body, 60);
    this.replyText.replaceChildren(
      `${what} `,
      h("strong", { class: "jce-replying-author", text: label }),
      h("span", { class: "jce-replying-quote", text: `: ${text}` }),
    );
  }

  _openThread(seq) {
    this._thread = seq;
    if (this._open && this._open.where === "list") this._open = null;
    this._setReplyTo(seq);
    this._renderThread();
    this.composer.focus();
  }

  _closeThread() {
    if (this._thread === null) return;
    if (this._replyTo === this._thread) this._replyTo = null;
    if (this._open && this._open.where === "thread") this._open = null;
    this._thread = null;
    this._renderThread();
    this._renderReplyBar();
    this._scheduleRead();
  }

  /** The thread view: the message and its replies, over the message list. */
  _renderThread() {
    const room = this.active;
    const parent = room && this._thread !== null ? messageAt(room, this._thread) : null;
    if (!parent) {
      if (this._thread !== null && this._replyTo === this._thread) this._replyTo = null;
      this._thread = null;
      this.threadPanel.hidden = true;
      this.threadList.replaceChildren();
      return;
    }
    const replies = repliesTo(room, parent.seq);
    const label = this._labels([parent.user]).get(parent.user.username);
    const count = replies.length === 1 ? "1 reply" : `${replies.length} replies`;
    this.threadTitle.textContent = `Thread of ${label}'s message · ${count}`;
    const first = this._messageNode(parent, null, "thread");
    first.classList.add("jce-thread-parent");
    this.threadList.replaceChildren(first, ...replies.map((m, i) => this._messageNode(m, replies[i - 1], "thread")));
    this.threadPanel.hidden = false;
  }

  /**
   * Show message `seq` in the list, highlighted a moment if `flash`: in the segment
   * shown, or in another one held, or else loaded with the messages around it (one
   * request: an island, see segments.js).
   */
  _jumpTo(seq, flash = true) {
    const room = this.active;
    if (!room || !Number.isSafeInteger(seq)) return;
    this._closeThread();
    this._jump = null;
    if (messageAt(room, seq) && !this._nodes.has(seq)) this._showSegment(seq);
    const node = this._nodes.get(seq);
    if (node) {
      this._reveal(node, flash);
      this._scheduleRead();
      return;
    }
    if (!room.joined) {
      this._jump = { seq, flash }; // the room is being joined: its messages come first
      return;
    }
    if (seq > room.seq || room.segmentOf(seq) >= 0) {
      this._showError("That message is not in this room's history any more.");
      return;
    }
    this._jump = { seq, flash };
    this.conn.loadAround(room.name, seq, this._page());
    if (!this.conn.loading(room.name)) this._jump = null; // not sent: not connected
  }

  _continueJump() {
    if (this._jump !== null) this._jumpTo(this._jump.seq, this._jump.flash);
  }

  /** Scroll the list to `node` (centred), and highlight it a moment if `flash`. */
  _reveal(node, flash) {
    const scroller = this.scroller;
    const offset = node.getBoundingClientRect().top - scroller.getBoundingClientRect().top;
    scroller.scrollTop += offset - Math.max(0, (scroller.clientHeight - node.offsetHeight) / 2);
    if (!flash) return;
    node.classList.add("jce-flash");
    setTimeout(() => node.classList.remove("jce-flash"), FLASH_MS);
  }

  _atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_EDGE_PX;
  }

  /** Scroll to the end of the segment shown (drawing its newest messages if they are not). */
  _scrollToBottom() {
    if (this._windowAtEnd()) this._toBottom();
    else this._renderMessages(true);
  }

  _toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.newButton.classList.remove("jce-show");
    this._stuck = true;
    this._sticking = false;
    this._scrolledTo = this.scroller.scrollTop;
  }

  /** At the next frame: follow the newest messages if sticking to them, and trim the list. */
  _settleSoon() {
    if (this._settleFrame) return;
    this._settleFrame = requestAnimationFrame(() => {
      this._settleFrame = 0;
      if (this._sticking) this._scrollToBottom();
      this._trim();
    });
  }

  // ---- read markers -----------------------------------------------------------------

  /** Whether the person can see the active room: shown here, page visible, in view. */
  _attended() {
    return Boolean(this.active && !document.hidden && this._onScreen && this.root.isConnected);
  }

  /** Whether they are reading its messages (attended, no thread over them). */
  _looking() {
    return this._attended() && this._thread === null;
  }

  /** The page was hidden or shown, or the window scrolled in or out of view. */
  _attendChanged() {
    const attended = this._attended();
    if (attended && !this._attending) this._line = undefined; // placed afresh: see linePlace
    this._attending = attended;
    this._updateLine();
    if (this.active) this._renderBadge(this.active);
    this._scheduleRead();
  }

  /** Where the "new messages" line of the active room goes now (see linePlace). */
  _linePlace() {
    const room = this.active;
    if (!room) return undefined;
    const me = this.conn.user ? this.conn.user.username : "";
    const unread = room.read === null ? undefined : firstUnread(room.messages, room.read, me);
    return linePlace(this._line, this._attended(), unread);
  }

  /** Move the "new messages" line where it goes now (redrawing the messages it leaves and joins). */
  _updateLine() {
    const before = this._line;
    this._line = this._linePlace();
    if (before === this._line) return;
    if (this._line === null || this._line === undefined) this.unreadLine.remove();
    for (const seq of [before, this._line]) if (Number.isSafeInteger(seq)) this._redraw(seq);
  }

  /** Your read marker in room `name` moved (here, in another tab, or on joining). */
  _onReadMoved(name) {
    const room = this.conn.rooms.get(name);
    if (!room) return;
    this._renderBadge(room);
    if (room !== this.active) return;
    this._updateLine();
    this._continueJump(); // a room joined to jump into it is here
    this._scheduleRead();
  }

  /** Send the read marker soon (at most once per READ_DELAY_MS), if the person is reading. */
  _scheduleRead() {
    if (this._readTimer) return;
    this._readTimer = setTimeout(() => {
      this._readTimer = 0;
      this._markRead();
    }, READ_DELAY_MS);
  }

  _markRead() {
    const room = this.active;
    if (!room || !room.joined || !this._looking()) return;
    if (this.conn.markRead(room.name, this._readUpTo()) !== null) this._renderBadge(room);
  }

  /**
   * How far the person has read: the room's end if the newest messages are shown to
   * their end, else the last message in view (in an island, as far as they read it).
   */
  _readUpTo() {
    const room = this.active;
    if (this._atBottom() && this._windowAtEnd()) {
      const [, last] = this._segmentEnds();
      return this._anchor === null ? room.seq : last ? last.seq : 0;
    }
    const bottom = this.scroller.getBoundingClientRect().bottom + 1;
    const items = this.list.children;
    let lo = 0;
    let hi = items.length - 1;
    let seen = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].getBoundingClientRect().bottom <= bottom) {
        seen = Number(items[mid].dataset.seq);
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return seen;
  }

  // ---- mentions --------------------------------------------------------------------------

  /** Your unread mentions changed: the button, the tabs' badges, the list and the title. */
  _renderMentions() {
    const state = this.conn.mentions;
    const count = mentionCount(state);
    this.mentionsCount.textContent = count ? String(count) : "";
    this.mentionsToggle.classList.toggle("jce-has-mentions", count > 0);
    this.mentionsToggle.title = count ? `${count} unread mention${count === 1 ? "" : "s"} of you` : "No unread mentions";
    this._renderBadges();
    if (!this.mentionsPanel.hidden) this._renderMentionList();
    reportMentions(this, count);
  }

  _renderMentionList() {
    const entries = mentionList(this.conn.mentions);
    const me = this.conn.user;
    const labels = this._labels([...this._people.values(), ...entries.map((e) => e.message.user), ...(me ? [me] : [])]);
    const labelOf = (username) => labels.get(username) || username;
    this.mentionsList.replaceChildren(
      ...entries.map((entry) => {
        const when = Number.isFinite(entry.message.ts) ? clock(entry.message.ts) : "";
        return mentionItemNode(entry, labelOf(entry.message.user.username), when, labelOf);
      }),
    );
    this.mentionsEmpty.hidden = entries.length > 0;
    this._renderNotify();
  }

  _renderNotify() {
    const permission = notificationPermission();
    this.notifyButton.hidden = permission !== "default";
    const notes = {
      granted: "You are notified of mentions while this page is hidden.",
      denied: "Notifications are blocked for this page in your browser's settings.",
    };
    this.notifyNote.textContent = notes[permission] || "";
  }

  _showMentions(open) {
    this.mentionsPanel.hidden = !open;
    this.mentionsToggle.setAttribute("aria-expanded", String(open));
    if (!open) return;
    this._renderMentionList();
    const first = this.mentionsList.querySelector("button") || this.notifyButton;
    if (!first.hidden) first.focus({ preventScroll: true });
  }

  /** Open room `name` (joining it if need be) at message `seq`. */
  _openMention(name, seq) {
    this._showMentions(false);
    this.openRoom(name);
    this._jumpTo(seq);
  }

  /** A mention came live: tell the person if the page is hidden (and they allowed it). */
  _notifyMention(name, message) {
    const me = this.conn.user;
    const labels = this._labels([...this._people.values(), message.user, ...(me ? [me] : [])]);
    const labelOf = (username) => labels.get(username) || username;
    const shown = { ...message, body: bodyWithNames(message, labelOf) };
    notify(mentionNotice(name, shown, labelOf(message.user.username)), () => this._openMention(name, message.seq));
  }

  // ---- search and export -------------------------------------------------------------

  _runSearch() {
    const query = this.searchInput.value.trim();
    if (!query) return;
    if (!searchable(query)) {
      this._showError("Search for some words (letters or digits), at most 1,000 characters.");
      return;
    }
    const id = this.conn.search(query);
    if (id === null) {
      this._showError("Not connected to the chat server: search when it is back.");
      return;
    }
    this._search = id;
    this._showMentions(false);
    this.searchTitle.textContent = `Searching for “${query}”…`;
    this.searchList.replaceChildren();
    this.searchPanel.hidden = false;
  }

  _closeSearch() {
    this._search = null;
    this.searchPanel.hidden = true;
  }

  /** The answer to the search: each result's room, author, time and body, its matches marked. */
  _showResults(results) {
    this._search = null;
    const query = this.searchInput.value.trim();
    const count = results.length === 1 ? "1 result" : `${results.length} results`;
    this.searchTitle.textContent = `${count} for “${query}”`;
    const labels = this._labels(results.map((r) => r.user));
    this.searchList.replaceChildren(
      ...results.map((result) => {
        const text = h("span", { class: "jce-result-text" });
        text.append(...markedParts(result.body, result.marks).map((part) => (part.marked ? h("mark", { text: part.text }) : part.text)));
        const button = h(
          "button",
          { class: "jce-result", type: "button", "data-room": result.room, "data-seq": String(result.seq) },
          h(
            "span",
            { class: "jce-result-where" },
            h("span", { class: "jce-result-room", text: `#${result.room}` }),
            h("span", { class: "jce-result-author", text: labels.get(result.user.username) || result.user.username }),
            h("time", { class: "jce-result-time", text: new Date(result.ts * 1000).toLocaleString() }),
          ),
          text,
        );
        return h("li", {}, button);
      }),
    );
    if (results.length === 0) this.searchList.append(h("li", { class: "jce-search-empty", text: "No message has all these words." }));
    this.searchPanel.hidden = false;
  }

  /** Open room `name` (joining it if need be) at message `seq`, found by a search. */
  _openResult(name, seq) {
    this.searchPanel.hidden = true;
    this.openRoom(name);
    this._jumpTo(seq);
  }

  /** Download the active room as Markdown, once all its earlier messages are loaded. */
  _export() {
    const room = this.active;
    if (!room) return;
    if (!room.joined) {
      this._showError("This room is not joined yet: export it once it is.");
      return;
    }
    this._exporting = room.name;
    this._continueExport();
  }

  _continueExport() {
    const room = this._exporting === null ? undefined : this.conn.rooms.get(this._exporting);
    if (!room) {
      this._exporting = null;
      return;
    }
    // Every hole is filled from its newer end, then the earliest pages loaded.
    const holes = room.holes;
    if (holes.length || !room.reachedStart) {
      const before = holes.length ? holes.at(-1)[1] : undefined;
      this.conn.loadEarlier(room.name, this._page(), before);
      if (this.conn.loading(room.name)) return; // the next page comes as "loaded"
      this._exporting = null;
      this._showError("Not connected to the chat server: export when it is back.");
      return;
    }
    this._exporting = null;
    const text = exportMarkdown(room.name, room.messages, undefined, (a) => this.http.attachmentUrl(a.url));
    const url = URL.createObjectURL(new Blob([text], { type: "text/markdown;charset=utf-8" }));
    const link = h("a", { href: url, download: exportFileName(room.name) });
    link.hidden = true;
    this.root.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // ---- the @-autocomplete -----------------------------------------------------------------

  /** Open, filter or close the autocomplete for what is typed before the caret. */
  _updateAutocomplete() {
    const room = this.active;
    const composer = this.composer;
    if (!room || composer.disabled || composer.selectionStart !== composer.selectionEnd) {
      this._closeAutocomplete();
      return;
    }
    const text = composer.value;
    const caret = composer.selectionStart;
    if (this._acDismissed !== null) {
      const typed = mentionQuery(text, caret);
      if (!typed || typed.start !== this._acDismissed) this._acDismissed = null;
    }
    const me = this.conn.user ? this.conn.user.username : "";
    const candidates = mentionCandidates(room.members.values(), room.messages, me);
    this._ac = autocompleteFor(text, caret, candidates, { dismissed: this._acDismissed, previous: this._ac });
    this._renderAutocomplete();
  }

  _closeAutocomplete() {
    if (this._ac === null) return;
    this._ac = null;
    this._renderAutocomplete();
  }

  _renderAutocomplete() {
    const ac = this._ac;
    this.acList.hidden = ac === null;
    this.composer.setAttribute("aria-expanded", String(ac !== null));
    if (ac === null) {
      this.composer.removeAttribute("aria-activedescendant");
      this.acList.replaceChildren();
      return;
    }
    const labels = this._labels(ac.items);
    this.acList.replaceChildren(
      ...ac.items.map((user, i) => {
        const selected = i === ac.index;
        const option = h(
          "li",
          { class: "jce-ac-option", id: `${this.acList.id}-${i}`, role: "option", "aria-selected": String(selected), "data-username": user.username },
          avatar(user),
          h("span", { class: "jce-ac-name", text: labels.get(user.username) }),
          h("span", { class: "jce-ac-username", text: `@${user.username}` }),
        );
        if (selected) option.classList.add("jce-selected");
        return option;
      }),
    );
    this.composer.setAttribute("aria-activedescendant", `${this.acList.id}-${ac.index}`);
  }

  /** A key in the composer while the autocomplete is open; returns whether it took it. */
  _autocompleteKey(event) {
    if (this._ac === null || event.isComposing || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return false;
    const { state, action } = autocompleteKey(this._ac, event.key);
    if (action === null) return false;
    event.preventDefault();
    if (action === "move") {
      this._ac = state;
      this._renderAutocomplete();
    } else if (action === "insert") {
      this._pickMention(state.items[state.index].username);
    } else {
      this._acDismissed = this._ac.start;
      this._closeAutocomplete();
    }
    return true;
  }

  /** Put `@username ` in place of the mention being typed. */
  _pickMention(username) {
    const ac = this._ac;
    if (ac === null) return;
    const { text, caret } = insertMention(this.composer.value, ac.start, this.composer.selectionStart, username);
    this.composer.value = text;
    this.composer.focus();
    this.composer.setSelectionRange(caret, caret);
    this._closeAutocomplete();
    this._onInput();
  }

  // ---- members, typing, values -----------------------------------------------------

  /** Redraw the member list at the next frame (presence can come many times a second). */
  _scheduleMembers() {
    if (this._membersFrame) return;
    this._membersFrame = requestAnimationFrame(() => {
      this._membersFrame = 0;
      this._renderMembers();
    });
  }

  /** The member list: the room's count, the members known (items kept while unchanged), and "Show more". */
  _renderMembers() {
    const room = this.active;
    const me = this.conn.user;
    const members = room ? [...room.members.values()] : [];
    const labels = this._labels();
    const count = room ? Math.max(room.memberCount, members.length) : 0;
    this.membersTitle.textContent = `Members · ${count.toLocaleString("en-US")}`;
    const nodes = members.map((user) => {
      this._people.set(user.username, user);
      const own = Boolean(me && user.username === me.username);
      const text = memberText(labels.get(user.username), user, own);
      const title = user.kernel ? `${user.username}: only their kernel is here` : user.username;
      const key = JSON.stringify([text, title, Boolean(user.kernel), colorOf(user), initialsOf(user)]);
      const known = this._memberNodes.get(user.username);
      if (known && known.key === key) return known.node;
      const item = h("li", { class: "jce-member", "data-username": user.username, title }, avatar(user), h("span", { text }));
      if (user.kernel) item.classList.add("jce-member-kernel");
      this._memberNodes.set(user.username, { key, node: item });
      return item;
    });
    placeChildren(this.memberList, nodes);
    if (this._memberNodes.size > members.length) {
      for (const username of this._memberNodes.keys()) if (!room || !room.members.has(username)) this._memberNodes.delete(username);
    }
    this.moreMembers.hidden = !(room && room.moreMembers);
    this.moreMembers.disabled = Boolean(room && room.membersRequest !== null);
  }

  _renderTyping() {
    const room = this.active;
    const me = this.conn.user;
    const names = room ? [...room.typing.values()].filter((u) => !me || u.username !== me.username).map(nameOf) : [];
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "several people are typing…";
    setText(this.typingLine, text);
  }

  /** Redraw `topic`'s value at the next frame (every value if `topic` is undefined). */
  _scheduleValues(topic) {
    if (topic === undefined) this._allValuesDirty = true;
    else this._dirtyTopics.add(topic);
    // Values can arrive thousands of times a second: draw at most once per frame.
    if (!this._valuesFrame) {
      this._valuesFrame = requestAnimationFrame(() => {
        this._valuesFrame = 0;
        this._renderValues();
      });
    }
  }

  /** Update the values panel: the topics that changed (all when asked), in place. */
  _renderValues() {
    const room = this.active;
    const values = room ? room.values : new Map();
    if (room !== this._valuesRoom) {
      this._valuesRoom = room;
      this._allValuesDirty = true;
    }
    if (this._allValuesDirty) {
      for (const [topic, drawn] of this._valueNodes) {
        if (!values.has(topic)) {
          drawn.node.remove();
          this._valueNodes.delete(topic);
        }
      }
    }
    for (const topic of this._allValuesDirty ? values.keys() : this._dirtyTopics) {
      const entry = values.get(topic);
      if (entry) this._drawValue(topic, entry);
    }
    this._allValuesDirty = false;
    this._dirtyTopics.clear();
    this.valuesEmpty.hidden = this._valueNodes.size > 0;
  }

  /** Update one topic's node, or insert it in alphabetical order if it is new. */
  _drawValue(topic, entry) {
    let drawn = this._valueNodes.get(topic);
    if (!drawn) {
      drawn = valueNode(topic);
      this._valueNodes.set(topic, drawn);
      const next = [...this.valuesList.children].find((child) => child.dataset.topic.localeCompare(topic) > 0);
      this.valuesList.insertBefore(drawn.node, next || null);
    }
    drawValue(drawn, entry);
  }

  // ---- composing -------------------------------------------------------------------

  _onInput() {
    if (!this.active) return;
    const hasText = this.composer.value.trim().length > 0;
    const now = Date.now();
    if (hasText && (!this._typingActive || now - this._typingSentAt > TYPING_RENEW_MS)) {
      this.conn.typing(this.active.name, true);
      this._typingActive = true;
      this._typingSentAt = now;
    } else if (!hasText) {
      this._stopTyping();
    }
  }

  _stopTyping() {
    if (this._typingActive && this.active) this.conn.typing(this.active.name, false);
    this._typingActive = false;
  }

  /** Share the files a paste or drop carries (`transfer`) in the active room. */
  _share(event, transfer) {
    const files = filesOf(transfer);
    if (!files.length) return;
    event.preventDefault();
    if (!this.active || this.conn.state !== "connected") {
      this._showError("Files can be shared once the chat is connected and a room is open.");
      return;
    }
    for (const file of files) this.uploads.share(this.active.name, file, this._replyTo);
  }

  _send() {
    const body = this.composer.value;
    if (!this.active || !body.trim() || this.conn.state !== "connected") return;
    const limit = this.conn.limits && this.conn.limits.max_message_size;
    const size = new TextEncoder().encode(body).length;
    if (limit && size > limit) {
      this._showError(`This message is ${size} bytes; the limit is ${limit}. Split it or share a file instead.`);
      return;
    }
    this.conn.send(this.active.name, body, this._replyTo);
    this._typingActive = false; // the server ends the typing indicator on send
    this.composer.value = "";
    this._acDismissed = null;
    this._closeAutocomplete();
    // In a thread, the next message replies in it too; elsewhere a reply is one message.
    if (this._replyTo !== this._thread) this._setReplyTo(null);
    if (this._anchor !== null) this._showLive(); // what you send shows under the newest
    else this._scrollToBottom();
  }

  _onError(frame) {
    if (frame.room !== undefined && frame.room === this._exporting) this._exporting = null;
    const history = frame.request && frame.request.op === "history";
    if (history && this.active && frame.room === this.active.name) this._jump = null;
    const room = frame.room !== undefined ? this.conn.rooms.get(frame.room) : undefined;
    if (room && !room.joined && !room.epoch) this.closeRoom(room.name); // the join was refused
    const refusal = frame.request ? REFUSALS[frame.code] : undefined;
    const said = typeof refusal === "object" ? refusal[frame.request.op] : refusal;
    this._showError(said || frame.message);
  }

  _showError(message) {
    this.errorLine.textContent = message;
    clearTimeout(this._errorTimer);
    this._errorTimer = setTimeout(() => (this.errorLine.textContent = ""), ERROR_SHOW_MS);
  }

  _showState(state) {
    const me = this.conn.user;
    const labels = {
      connecting: "connecting…",
      connected: me ? `connected as ${nameOf(me)}` : "connected",
      reconnecting: "reconnecting…",
      offline: "offline",
      closed: "closed",
    };
    this.state.dataset.state = state;
    this.stateLabel.textContent = labels[state] || state;
    this.retryButton.hidden = state !== "offline";
    const usable = state === "connected" && this.active !== null;
    this.composer.disabled = !usable;
    this.sendButton.disabled = !usable;
    if (state === "connected") {
      this.composer.placeholder = this.active ? `Message #${this.active.name} (Enter to send, Shift+Enter for a new line)` : "Join a room to start chatting";
    } else if (state === "offline") {
      this.composer.placeholder = "Offline: the chat server cannot be reached. Retrying…";
    } else {
      this.composer.placeholder = "Connecting to the chat server…";
    }
  }
}
