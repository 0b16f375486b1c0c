import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { FakeSocket, installPage } from "./page.js";

// Mentions and read markers in the chat window (jsdom): the real view on the real
// connection, whose socket the test plays as the server. jsdom has no layout (every
// message is "in view", the list is always "at its end") and no Notification: the
// browser's notifications are played by a class that records what it is asked.
const window = installPage("<!doctype html><html><head><title>chat.ipynb</title></head><body></body></html>");
const { ChatConnection } = await import("../src/connection.js");
const { ChatView } = await import("../src/view.js");

const ALICE = { username: "alice", name: "alice", display_name: "Alice" };
const BOB = { username: "bob", name: "bob", display_name: "Bob" };
const CAROL = { username: "carol", name: "carol", display_name: "Carol" };
const HOSTILE = '<img src=x onerror="globalThis.__xss=1">';

/** The browser's notifications, as far as the widget uses them. */
class Notifications {
  static permission = "default";
  static shown = [];
  static asked = 0;

  static async requestPermission() {
    Notifications.asked += 1;
    Notifications.permission = "granted";
    return "granted";
  }

  constructor(title, options) {
    this.title = title;
    this.options = options;
    Notifications.shown.push(this);
  }

  close() {}
}
globalThis.Notification = Notifications;

const message = (seq, user, body, fields = {}) => ({ op: "message", room: "general", seq, id: `m${seq}`, ts: 1000 + seq, user, body, ...fields });

let conn;
let view;
let ws;
let el;

/** Bob's window on "general" (his read marker at `read`), holding `history`. */
function open(history, read = 0, members = [ALICE, BOB, CAROL]) {
  FakeSocket.opened = [];
  conn = new ChatConnection("ws://chat/ws", { WebSocketImpl: FakeSocket });
  conn.open();
  ws = FakeSocket.opened.at(-1);
  ws.receive({ op: "hello", user: BOB, limits: { max_message_size: 1000, history_page_size: 50 } });
  el = document.createElement("div");
  document.body.append(el);
  view = new ChatView(el, conn, { room: "general" });
  const seq = history.length ? history.at(-1).seq : 0;
  ws.receive({ op: "joined", room: "general", epoch: "e", seq, recovered: false, history, members, values: {}, read });
}

function hide(hidden) {
  Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
  document.dispatchEvent(new window.Event("visibilitychange"));
}

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout"] });
  globalThis.__xss = undefined;
  Notifications.permission = "default";
  Notifications.shown = [];
  Notifications.asked = 0;
});

afterEach(() => {
  view.destroy();
  conn.close();
  el.remove();
  hide(false);
  mock.timers.reset();
});

const item = (seq) => view.list.querySelector(`li[data-seq="${seq}"]`);
const click = (node) => node.dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
const key = (node, name, options = {}) => {
  const event = new window.KeyboardEvent("keydown", { key: name, bubbles: true, cancelable: true, ...options });
  node.dispatchEvent(event);
  return event;
};
/** Type `text` into the composer (the caret at its end). */
function type(text) {
  view.composer.focus();
  view.composer.value = text;
  view.composer.setSelectionRange(text.length, text.length);
  view.composer.dispatchEvent(new window.Event("input", { bubbles: true }));
}
const options = () => [...view.acList.querySelectorAll("[role=option]")];
const selected = () => view.acList.querySelector("[aria-selected=true]").dataset.username;
const tab = (name) => view.tabs.get(name);

test("@ opens the room's people (recent speakers first); arrows choose, Enter inserts @username, nothing is sent", () => {
  open([message(1, ALICE, "hi"), message(2, CAROL, "hello")]);
  assert.equal(view.root.dataset.username, "bob", "a window drawn after hello knows who you are");
  type("thanks @");
  assert.equal(view.acList.hidden, false);
  assert.deepEqual(options().map((o) => o.dataset.username), ["carol", "alice"], "carol spoke last; never bob himself");
  assert.equal(view.composer.getAttribute("aria-expanded"), "true");
  assert.equal(selected(), "carol");
  assert.ok(key(view.composer, "ArrowDown").defaultPrevented);
  assert.equal(selected(), "alice");
  assert.equal(view.composer.getAttribute("aria-activedescendant"), options()[1].id);
  key(view.composer, "ArrowDown");
  assert.equal(selected(), "carol", "round the list");
  key(view.composer, "ArrowUp");
  assert.ok(key(view.composer, "Enter").defaultPrevented);
  assert.equal(view.composer.value, "thanks @alice ");
  assert.equal(view.composer.selectionStart, "thanks @alice ".length);
  assert.equal(view.acList.hidden, true);
  assert.equal(ws.framesOf("send").length, 0, "Enter picked, it did not send");
  key(view.composer, "Enter");
  assert.equal(ws.framesOf("send")[0].body, "thanks @alice ", "the body keeps @username");
});

test("typing narrows the list; Tab inserts; Esc closes it and it stays closed for that mention; a click picks", () => {
  open([message(1, ALICE, "hi"), message(2, CAROL, "hello")]);
  type("@a");
  assert.deepEqual(options().map((o) => o.dataset.username), ["alice", "carol"], "a name prefix first, then anywhere");
  key(view.composer, "Tab");
  assert.equal(view.composer.value, "@alice ");
  type("@alice and @c");
  assert.ok(key(view.composer, "Escape").defaultPrevented);
  assert.equal(view.acList.hidden, true);
  type("@alice and @ca");
  assert.equal(view.acList.hidden, true, "dismissed: still closed while typing that mention");
  type("@alice and @ca @");
  assert.equal(view.acList.hidden, false, "a new @ opens it");
  click(options().find((o) => o.dataset.username === "carol").querySelector(".jce-ac-name"));
  assert.equal(view.composer.value, "@alice and @ca @carol ");
  // Esc with the list closed is the composer's again (nothing open: nothing happens)
  type("plain");
  assert.equal(key(view.composer, "Escape").defaultPrevented, false);
});

test("names in the autocomplete are text, never HTML; usernames a mention cannot name are not offered", () => {
  const evil = { username: "mallory", display_name: HOSTILE };
  open([message(1, evil, "hi"), message(2, { username: "x@y.z", display_name: "Mail" }, "hi")]);
  type("@");
  assert.deepEqual(options().map((o) => o.dataset.username), ["mallory", "alice", "carol"]);
  assert.equal(options()[0].querySelector(".jce-ac-name").textContent, HOSTILE);
  assert.equal(view.root.querySelectorAll("img").length, 0);
  assert.equal(globalThis.__xss, undefined);
});

test("a mention shows as the person's name, only for those the server stamped; yours stronger; code as typed", () => {
  const evil = { username: "mallory", display_name: HOSTILE };
  open([
    message(1, ALICE, "@bob and @carol: see `@bob`", { mentions: ["bob", "carol"] }),
    message(2, ALICE, "@bob said nobody", { mentions: [] }),
    message(3, evil, "hi @mallory.", { mentions: ["mallory", 7, null] }),
  ]);
  const marks = [...item(1).querySelectorAll(".jce-body .jce-mention")];
  assert.deepEqual(marks.map((m) => [m.textContent, m.title, m.classList.contains("jce-mention-me")]), [
    ["@Bob", "@bob", true],
    ["@Carol", "@carol", false],
  ]);
  assert.equal(item(1).querySelector(".jce-body code").textContent, "@bob", "code stays as typed");
  assert.ok(item(1).classList.contains("jce-mentioned"), "the message that mentions you is marked");
  assert.equal(item(2).querySelector(".jce-mention"), null, "not stamped: plain text");
  assert.ok(!item(2).classList.contains("jce-mentioned"));
  const hostile = item(3).querySelector(".jce-mention");
  assert.equal(hostile.textContent, `@${HOSTILE}`, "a name is text");
  assert.equal(item(3).querySelector(".jce-body").textContent.trim(), `hi @${HOSTILE}.`);
  assert.equal(view.root.querySelectorAll("img, script").length, 0);
  assert.equal(globalThis.__xss, undefined);
});

test("reading: the marker goes out while the room is read, only forward; the 'new messages' line stays put", () => {
  open([message(1, ALICE, "one"), message(2, ALICE, "two"), message(3, ALICE, "three")], 1);
  assert.ok(item(2).querySelector(".jce-unread-line"), "the line is before the first unread");
  assert.ok(!item(2).classList.contains("jce-cont"), "and starts a group of its own");
  mock.timers.tick(300);
  const [read] = ws.framesOf("read");
  assert.deepEqual([read.room, read.seq], ["general", 3]);
  ws.receive({ op: "read", room: "general", seq: 3, id: read.id });
  assert.ok(item(2).querySelector(".jce-unread-line"), "what was new when you came stays marked");
  ws.receive(message(4, ALICE, "four"));
  mock.timers.tick(300);
  assert.deepEqual(ws.framesOf("read").map((f) => f.seq), [3, 4]);
  assert.equal(view.list.querySelectorAll(".jce-unread-line").length, 1);
  // away: the marker stays, the line moves to what arrives meanwhile
  ws.receive({ op: "read", room: "general", seq: 4, id: ws.framesOf("read")[1].id });
  hide(true);
  assert.equal(view.list.querySelector(".jce-unread-line"), null, "all read");
  ws.receive(message(5, ALICE, "five"));
  mock.timers.tick(1000);
  assert.equal(ws.framesOf("read").length, 2, "a hidden page reads nothing");
  assert.ok(item(5).querySelector(".jce-unread-line"));
  hide(false);
  mock.timers.tick(300);
  assert.deepEqual(ws.framesOf("read").map((f) => f.seq), [3, 4, 5]);
  assert.ok(item(5).querySelector(".jce-unread-line"), "back: the line shows what came while away");
});

test("tabs count unread messages from your marker; reading in another tab clears the count here", () => {
  open([message(1, ALICE, "one")], 1);
  view.openRoom("lab");
  ws.receive({ op: "joined", room: "lab", epoch: "l", seq: 2, recovered: false, history: [message(1, ALICE, "a", { room: "lab" }), message(2, BOB, "b", { room: "lab" })], members: [ALICE, BOB], values: {}, read: 0 });
  view.openRoom("general"); // lab stays open in a tab, not shown
  assert.equal(tab("lab").badge.textContent, "1", "alice's message; not bob's own");
  ws.receive(message(3, CAROL, "c", { room: "lab" }));
  ws.receive(message(4, ALICE, "d", { room: "lab", deleted: true, body: "" }));
  assert.equal(tab("lab").badge.textContent, "2", "a deleted message is not unread");
  ws.receive({ op: "read", room: "lab", seq: 3 }); // bob read lab in another tab
  assert.equal(tab("lab").badge.textContent, "");
  assert.equal(tab("general").badge.textContent, "", "the room being read shows no count");
});

test("unread mentions: the badge, the title, the list; a click opens the room at the message; reading clears them", () => {
  const baseTitle = document.title;
  open([message(1, ALICE, "hi")], 1);
  const older = { op: "message", room: "lab", seq: 20, id: "x", ts: 1500, user: ALICE, body: `@bob ${HOSTILE}`, mentions: ["bob"] };
  ws.receive({ op: "mentions", mentions: [older] });
  assert.equal(view.mentionsCount.textContent, "1");
  assert.equal(document.title, `(@1) ${baseTitle}`);
  ws.receive({ op: "mention", room: "general", message: message(2, ALICE, "@bob look", { mentions: ["bob"] }) });
  ws.receive(message(2, ALICE, "@bob look", { mentions: ["bob"] }));
  assert.equal(tab("general").mentionBadge.textContent, "@1");
  assert.equal(document.title, `(@2) ${baseTitle}`);
  mock.timers.tick(300); // bob is reading general: his marker moves past its mention
  ws.receive({ op: "read", room: "general", seq: 2, id: ws.framesOf("read").at(-1).id });
  assert.equal(tab("general").mentionBadge.textContent, "");
  assert.equal(document.title, `(@1) ${baseTitle}`);

  click(view.mentionsToggle);
  assert.equal(view.mentionsPanel.hidden, false);
  const [entry] = view.mentionsList.querySelectorAll(".jce-mention-item");
  assert.equal(entry.querySelector(".jce-mention-room").textContent, "#lab");
  assert.equal(entry.querySelector(".jce-mention-author").textContent, "Alice");
  assert.equal(entry.querySelector(".jce-mention-text").textContent, `@Bob ${HOSTILE}`, "the body is text, its mentions names");
  assert.equal(view.root.querySelectorAll("img").length, 0);
  click(entry);
  assert.equal(view.mentionsPanel.hidden, true);
  const join = ws.framesOf("join").at(-1);
  assert.equal(join.room, "lab", "a room not joined is joined");
  assert.equal(view.active.name, "lab");
  ws.receive({ op: "joined", room: "lab", epoch: "l", seq: 80, recovered: false, history: [message(60, CAROL, "later", { room: "lab" })], members: [ALICE, BOB], values: {}, read: 10 });
  const page = ws.framesOf("history").at(-1);
  assert.deepEqual([page.room, page.around], ["lab", 20], "the messages around it, in one request");
  // (the room has nothing else before 60: the window reaches the newest messages held)
  ws.receive({ op: "history", room: "lab", id: page.id, messages: [{ ...older, seq: 20 }, message(21, CAROL, "x", { room: "lab" }), message(60, CAROL, "later", { room: "lab" })] });
  assert.equal(ws.framesOf("history").length, 1);
  assert.ok(item(20).classList.contains("jce-flash"), "shown, highlighted");
  assert.ok(item(20).querySelector(".jce-mention-me"));
  mock.timers.tick(300);
  const read = ws.framesOf("read").at(-1);
  assert.deepEqual([read.room, read.seq], ["lab", 80]);
  ws.receive({ op: "read", room: "lab", seq: 80, id: read.id });
  assert.equal(view.mentionsCount.textContent, "");
  assert.equal(document.title, baseTitle, "the title is itself again");
  click(view.mentionsToggle);
  assert.equal(view.mentionsEmpty.hidden, false);
});

test("a notification only while the page is hidden, once per mention, and permission is asked only on a click", async () => {
  open([message(1, ALICE, "hi")], 1);
  const mention = (seq) => ({ op: "mention", room: "lab", message: { ...message(seq, ALICE, "@bob come", { mentions: ["bob"] }), room: "lab" } });
  assert.equal(Notifications.asked, 0, "never asked on load");
  ws.receive(mention(5));
  hide(true);
  ws.receive(mention(6));
  assert.equal(Notifications.shown.length, 0, "not allowed yet");
  hide(false);
  click(view.mentionsToggle);
  assert.equal(view.notifyButton.hidden, false);
  click(view.notifyButton);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(Notifications.asked, 1);
  assert.equal(view.notifyButton.hidden, true);
  assert.match(view.notifyNote.textContent, /notified of mentions/);
  ws.receive(mention(7));
  assert.equal(Notifications.shown.length, 0, "the page is visible: the badge says it");
  hide(true);
  ws.receive(mention(8));
  ws.receive(mention(8));
  assert.equal(Notifications.shown.length, 1);
  const [shown] = Notifications.shown;
  assert.deepEqual([shown.title, shown.options.body, shown.options.tag], ["Alice mentioned you in #lab", "@Bob come", "jce-mention:lab:8"]);
  hide(false);
  shown.onclick();
  assert.equal(view.active.name, "lab", "clicking it opens the room");
});
