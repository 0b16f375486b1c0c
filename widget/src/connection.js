import { addMessage, applyChange, applyGap, mergePage, messageAt, resetMessages } from "./conversation.js";
import { addMention, markRead as moveMarker, newMentions, replaceMentions, startConnection, updateMessage } from "./mentions.js";
import { searchFrame, searchResults } from "./search.js";
import { cover, holesOf, moreRequest, pageCoverage, rangeIndexOf } from "./segments.js";
import { decodeValue, unpackBinary } from "./values.js";

// The browser's chat connection: one WebSocket, any number of rooms, protocol v1.
// It reconnects with jittered backoff, resumes every room from the last seq it saw,
// resends unacknowledged messages and changes (edit, delete, react, unreact) with their
// original ids (the server applies each id once) and keeps messages de-duplicated,
// ordered by seq and current (conversation.js applies the changes). A room's messages
// may have holes: opening it at an old message loads the window around that one, an
// island that history pages grow until it joins the live messages (segments.js); a
// resume only ever extends the live segment. It also keeps your read markers and unread
// mentions across rooms, joined or not (mentions.js). A big room's members come in pages:
// the join brings the count and the first page, `presence` batches of who joined and
// left (and the count), and `loadMembers` the following pages in username order.

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 10000;
const OFFLINE_AFTER_ATTEMPTS = 4;
const SERIES_LENGTH = 60;

const MEMBERS_PAGE = 100;

/** Whether `user` (from another user's frame: untrusted) is a user entry we can keep. */
export function isUser(user) {
  return Boolean(user) && typeof user === "object" && !Array.isArray(user) && typeof user.username === "string" && user.username !== "";
}

/** The valid users of `list` (a list of user entries, or one, the old presence form). */
function usersOf(list) {
  if (Array.isArray(list)) return list.filter(isUser);
  return isUser(list) ? [list] : [];
}

function newId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  return Math.random().toString(16).slice(2) + Date.now().toString(16);
}

/** One room as this browser sees it. */
export class RoomState {
  constructor(name) {
    this.name = name;
    this.epoch = null;
    this.seq = 0;
    this.joined = false;
    this.messages = []; // sorted by seq, no duplicates, every change applied
    this.ranges = []; // the seq ranges held, oldest first; the last is live (segments.js)
    this.requests = new Map(); // id -> history request sent and not answered
    this.late = new Map(); // seq -> changes to a message not held (see conversation.js)
    this.deleted = new Set(); // seqs of messages known deleted
    this.holders = 0; // how many windows (views) show this room; it is left at zero
    this.pending = new Map(); // id -> send frame, sent but not acknowledged
    this.changing = new Map(); // id -> edit/delete/react/unreact frame not acknowledged
    this.members = new Map(); // username -> user: the members known (a big room's first pages)
    this.memberCount = 0; // users in the room (joined.member_count, presence.count)
    this.membersAfter = undefined; // cursor of the next members page (undefined: the first; null: no more)
    this.membersRequest = null; // id of the members page asked and not answered
    this.typing = new Map(); // username -> user
    this.values = new Map(); // topic -> {value, user, ts, series: [[ts, number]]}
    this.read = null; // your read marker here (the server's), once joined
    this.readSent = 0; // the last read marker sent for this room and not refused
  }

  /** Whether the room's first message is held (nothing earlier to load). */
  get reachedStart() {
    return this.ranges.length > 0 && this.ranges[0][0] <= 1;
  }

  /** The holes between the segments held, as `[after, before]` seq pairs (see segments.js). */
  get holes() {
    return holesOf(this.ranges);
  }

  /** The index in `ranges` of the segment holding `seq`, or -1. */
  segmentOf(seq) {
    return rangeIndexOf(this.ranges, seq);
  }

  /** The live segment's messages are current up to `seq` (what arrived extends it). */
  _extendLive() {
    const live = this.ranges.at(-1);
    if (live && live[1] < this.seq) this.ranges[this.ranges.length - 1] = [live[0], this.seq];
  }

  /** This user's changes to message `seq` on their way, oldest first. */
  changesOf(seq) {
    return [...this.changing.values()].filter((frame) => frame.seq === seq);
  }

  /** Whether more members can be asked for than are known (see ChatConnection.loadMembers). */
  get moreMembers() {
    return this.joined && this.members.size < this.memberCount && this.membersAfter !== null;
  }

  /**
   * A presence batch (or the old single-user form): `left` users go, `joined` ones are
   * added or updated; `count` (when valid) replaces the count. Malformed entries are
   * skipped. Returns the usernames that left.
   */
  applyPresence(frame) {
    const left = usersOf(frame.left).map((user) => user.username);
    for (const username of left) this.members.delete(username);
    for (const user of usersOf(frame.joined)) this.members.set(user.username, user);
    this._setCount(frame.count);
    return left;
  }

  /** A members page: its users are known; `count` and the cursor move on. */
  applyMembersPage(frame) {
    for (const user of usersOf(frame.members)) this.members.set(user.username, user);
    this._setCount(frame.count);
    this.membersAfter = typeof frame.next === "string" && frame.next !== "" ? frame.next : null;
  }

  /** The first page, from `joined` (an old server sends everyone and no count). */
  resetMembers(frame) {
    this.members = new Map(usersOf(frame.members).map((user) => [user.username, user]));
    this.memberCount = 0;
    this.membersAfter = undefined;
    this.membersRequest = null;
    this._setCount(frame.member_count);
  }

  _setCount(count) {
    // An old server sends no count: everyone is in the member list.
    this.memberCount = Number.isSafeInteger(count) && count >= 0 ? count : this.members.size;
  }

  /** Record a decoded value (see decodeValue); finite numbers also extend its series. */
  setValue(event) {
    const previous = this.values.get(event.topic);
    const series = previous ? previous.series : [];
    const number = event.value.kind === "json" ? event.value.value : null;
    if (typeof number === "number" && Number.isFinite(number) && Number.isFinite(event.ts)) {
      series.push([event.ts, number]);
      if (series.length > SERIES_LENGTH) series.splice(0, series.length - SERIES_LENGTH);
    }
    this.values.set(event.topic, { value: event.value, user: event.user, ts: event.ts, series });
  }
}

/**
 * A chat connection, shared by every window (view) of one widget. Listen with
 * `conn.on(type, handler)`, which returns the function that stops listening; types:
 * state, hello, reset (room), message (room, msg), loaded (room, msgs, request: a history
 * page or window came; msgs are the messages it added, in seq order), members (room: its members, count or paging changed),
 * changed (room, msg: the new copy of a held message, or the same one when a change of
 * yours to it was acknowledged or refused), typing (room), values (room, topic; no
 * topic: all of them), pending (room), error (frame; with `request`, the refused send or
 * change, when it was one), undecodable (reason: a frame from the server that could not
 * be read), read (name: your read marker in room `name` moved; `conn.mentions.markers`
 * has it, and the room's `read` if it is held), mentions (the unread mentions changed:
 * `conn.mentions`, see mentions.js), mention (name, message: a new one came live).
 * `WebSocketImpl` replaces the browser's WebSocket (tests pass a fake one).
 */
export class ChatConnection {
  constructor(url, { beforeConnect, WebSocketImpl } = {}) {
    this.url = url;
    this._beforeConnect = beforeConnect || null;
    this._WebSocket = WebSocketImpl || globalThis.WebSocket;
    this.state = "connecting";
    this.user = null;
    this.moderator = false; // hello.moderator: this user may delete anyone's message
    this.limits = null;
    this.rooms = new Map();
    this._listeners = new Map();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._closed = false;
    this._opening = false;
    this._retries = new Set(); // timers resending a message the server asked to retry
    this.mentions = newMentions(); // your unread mentions and read markers, every room
    this._reads = new Map(); // id -> room name, of read markers sent and not answered
    this._searches = new Set(); // ids of searches sent and not answered
  }

  on(type, handler) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(handler);
    return () => this._listeners.get(type).delete(handler);
  }

  _emit(type, ...args) {
    for (const handler of this._listeners.get(type) || []) {
      try {
        handler(...args);
      } catch (err) {
        console.error("jupyter-chat-ext: listener failed", err);
      }
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._emit("state", state);
    }
  }

  async open() {
    if (this._closed || this._opening) return;
    if (this._beforeConnect) {
      this._opening = true;
      try {
        await this._beforeConnect();
      } catch (err) {
        this._opening = false;
        this._scheduleReconnect();
        return;
      }
      this._opening = false;
      if (this._closed) return;
    }
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._unjoinAll();
      this._dropSearches();
      this._scheduleReconnect();
    };
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    for (const timer of this._retries) clearTimeout(timer);
    this._retries.clear();
    this._setState("closed");
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onclose = null;
      ws.close();
    }
    this._listeners.clear();
  }

  _scheduleReconnect() {
    if (this._closed) return;
    this._attempt += 1;
    this._setState(this._attempt > OFFLINE_AFTER_ATTEMPTS ? "offline" : "reconnecting");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this._attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this.open(), delay);
  }

  /** Open a new connection now, resuming every room (the server re-reads who you are). */
  reconnect() {
    if (this._closed) return;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    this._unjoinAll();
    clearTimeout(this._timer);
    this._attempt = 0;
    this.open();
  }

  /** The connection is gone: rooms are joined again on the next, and what was asked on this one is never answered. */
  _unjoinAll() {
    for (const room of this.rooms.values()) {
      room.joined = false;
      room.requests.clear();
      room.membersRequest = null;
    }
  }

  /** Reconnect now (the "retry" button), instead of waiting for the backoff. */
  retryNow() {
    if (this._ws || this._closed || this._opening) return;
    clearTimeout(this._timer);
    this.open();
  }

  _write(frame) {
    if (!this._ws || this._ws.readyState !== this._WebSocket.OPEN || this.state !== "connected") {
      return false;
    }
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** Show room `name` in one more window: joins it for the first. Pair with leave(). */
  join(name) {
    let room = this.rooms.get(name);
    if (!room) {
      room = new RoomState(name);
      this.rooms.set(name, room);
      this._sendJoin(room);
    }
    room.holders += 1;
    return room;
  }

  _sendJoin(room) {
    const frame = { op: "join", room: room.name, id: newId() };
    if (room.epoch) frame.since = { epoch: room.epoch, seq: room.seq };
    this._write(frame);
  }

  /** One window stops showing room `name`; the last one to stop leaves it. */
  leave(name) {
    const room = this.rooms.get(name);
    if (!room || --room.holders > 0) return;
    this.rooms.delete(name);
    this._write({ op: "leave", room: name, id: newId() });
  }

  /**
   * Send `body` to a room (as a reply to message `replyTo` if set; with `attachment`,
   * an uploaded file's {upload, kind, preview}); returns its id.
   */
  send(roomName, body, replyTo = null, attachment = null) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    const id = newId();
    const frame = { op: "send", room: roomName, id, body };
    if (replyTo !== null && replyTo !== undefined) frame.reply_to = replyTo;
    if (attachment) frame.attachment = attachment;
    room.pending.set(id, frame);
    this._emit("pending", room);
    if (room.joined) this._write(frame);
    return id;
  }

  /** Replace the body of your message `seq`; returns the request's id. */
  edit(roomName, seq, body) {
    return this._change(roomName, { op: "edit", seq, body });
  }

  /** Delete message `seq` (yours, or any as a moderator); returns the request's id. */
  deleteMessage(roomName, seq) {
    return this._change(roomName, { op: "delete", seq });
  }

  /** Add your reaction `emoji` to message `seq`; returns the request's id. */
  react(roomName, seq, emoji) {
    return this._change(roomName, { op: "react", seq, emoji });
  }

  /** Take back your reaction `emoji` from message `seq`; returns the request's id. */
  unreact(roomName, seq, emoji) {
    return this._change(roomName, { op: "unreact", seq, emoji });
  }

  // A change is kept until the server's `change` with its id comes back, and sent again
  // (same id: applied once) after a reconnect or when the server asks to retry.
  _change(roomName, fields) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    const id = newId();
    const frame = { ...fields, room: roomName, id };
    room.changing.set(id, frame);
    this._changedLocally(room, frame.seq);
    if (room.joined) this._write(frame);
    return id;
  }

  /** What this user has pending on message `seq` changed: redraw its copy, if held. */
  _changedLocally(room, seq) {
    const copy = messageAt(room, seq);
    if (copy) this._emit("changed", room, copy);
  }

  typing(roomName, active) {
    const room = this.rooms.get(roomName);
    if (room && room.joined) this._write({ op: "typing", room: roomName, active });
  }

  /**
   * You have read room `roomName` up to `seq`: move your read marker there, if that is
   * forward (of the marker and of what was sent already). Returns the request's id, or
   * null when there is nothing to send.
   */
  markRead(roomName, seq) {
    const room = this.rooms.get(roomName);
    if (!room || !room.joined || room.read === null) return null;
    if (!Number.isSafeInteger(seq) || seq <= Math.max(room.read, room.readSent)) return null;
    const id = newId();
    if (!this._write({ op: "read", room: roomName, seq, id })) return null;
    room.readSent = seq;
    this._reads.set(id, roomName);
    return id;
  }

  /** Your read marker in room `roomName` moved to (at least) `seq`. */
  _onRead(roomName, seq) {
    if (typeof roomName !== "string" || !Number.isSafeInteger(seq) || seq < 0) return;
    const moved = moveMarker(this.mentions, roomName, seq);
    const room = this.rooms.get(roomName);
    const heldMoved = room && (room.read === null || seq > room.read);
    if (heldMoved) room.read = seq;
    if (moved || heldMoved) {
      this._emit("read", roomName);
      if (moved) this._emit("mentions");
    }
  }

  /**
   * Search every room you may read for `query` (newest first, at most `limit`); returns
   * the request's id (the answer comes as a `search` event), or null if not connected.
   */
  search(query, limit = undefined) {
    const id = newId();
    if (!this._write(searchFrame(id, query, limit))) return null;
    this._searches.add(id);
    return id;
  }

  /** The searches on a connection that closed will never be answered. */
  _dropSearches() {
    const ids = [...this._searches];
    this._searches.clear();
    for (const id of ids) this._emit("searchFailed", id);
  }

  /**
   * Load the page of messages before the segment holding `seq` (default: the oldest
   * segment). Returns the request's id, or null when there is nothing to load or it is
   * being loaded already.
   */
  loadEarlier(roomName, limit = 50, seq = undefined) {
    return this._loadMore(roomName, seq, "earlier", limit);
  }

  /**
   * Load messages after the segment holding `seq` (an island), toward the next one, so
   * the hole between them shrinks (see segments.js, moreRequest). Returns the request's
   * id, or null (the live segment: nothing later; or it is being loaded already).
   */
  loadLater(roomName, seq, limit = 50) {
    return this._loadMore(roomName, seq, "later", limit);
  }

  _loadMore(roomName, seq, kind, limit) {
    const room = this.rooms.get(roomName);
    if (!room || !room.joined) return null;
    const index = seq === undefined ? 0 : room.segmentOf(seq);
    const request = moreRequest(room.ranges, index, kind, this._pageLimit(limit));
    return request ? this._history(room, request) : null;
  }

  /**
   * Load the messages around `seq` (up to `limit`, about half before it) in one request:
   * an island, unless it reaches a segment held. Returns the request's id, or null if
   * the room is not joined, `seq` is held already (or not in the log), or it is loading.
   */
  loadAround(roomName, seq, limit = 50) {
    const room = this.rooms.get(roomName);
    if (!room || !room.joined || !Number.isSafeInteger(seq) || seq < 1 || seq > room.seq) return null;
    if (room.segmentOf(seq) >= 0) return null;
    return this._history(room, { kind: "around", around: seq, limit: this._pageLimit(limit) });
  }

  /**
   * Ask for the next page of room `roomName`'s members (in username order, after the
   * last page's cursor); the answer comes as a `members` event. Returns the request's
   * id, or null: not joined, no more to ask, or a page is on its way.
   */
  loadMembers(roomName, limit = MEMBERS_PAGE) {
    const room = this.rooms.get(roomName);
    if (!room || !room.moreMembers || room.membersRequest !== null) return null;
    const id = newId();
    const frame = { op: "members", room: roomName, id, limit };
    if (typeof room.membersAfter === "string") frame.after = room.membersAfter;
    if (!this._write(frame)) return null;
    room.membersRequest = id;
    return id;
  }

  /** Whether a history request of room `roomName` is on its way. */
  loading(roomName) {
    const room = this.rooms.get(roomName);
    return Boolean(room && room.requests.size);
  }

  _pageLimit(limit) {
    const most = this.limits && this.limits.history_page_size;
    return Number.isSafeInteger(most) && most > 0 ? Math.min(limit, most) : limit;
  }

  /** Send a history request (the same one twice in flight is sent once); returns its id or null. */
  _history(room, request) {
    for (const sent of room.requests.values()) {
      if (sent.before === request.before && sent.around === request.around) return null;
    }
    const id = newId();
    const frame = { op: "history", room: room.name, id, limit: request.limit };
    if (request.before !== undefined) frame.before = request.before;
    else frame.around = request.around;
    if (!this._write(frame)) return null;
    room.requests.set(id, request);
    return id;
  }

  _onFrame(data) {
    let frame;
    try {
      if (data instanceof ArrayBuffer) {
        // A live value with raw buffers (arrays, tables): decode it for display.
        const { header, buffers } = unpackBinary(data);
        frame = header;
        frame.value = decodeValue(header.value, buffers);
      } else {
        frame = JSON.parse(data);
        if (frame.op === "data") frame.value = decodeValue(frame.value, []);
      }
    } catch (err) {
      // Said in the window, not only in the console: something is missing from it.
      console.warn("jupyter-chat-ext: a frame from the server could not be read", err);
      this._emit("undecodable", `A message from the chat server could not be read (${err.message}); it was skipped.`);
      return;
    }
    const room = frame.room !== undefined ? this.rooms.get(frame.room) : undefined;
    switch (frame.op) {
      case "hello":
        this.user = frame.user;
        this.moderator = frame.moderator === true;
        this.limits = frame.limits;
        this._attempt = 0;
        this._setState("connected");
        startConnection(this.mentions);
        this._reads.clear();
        this._dropSearches();
        this._emit("hello", frame);
        for (const r of this.rooms.values()) this._sendJoin(r);
        break;
      case "joined":
        if (room) this._onJoined(room, frame);
        break;
      case "message":
        if (room) this._onMessage(room, frame);
        break;
      case "change":
        if (room) this._onChange(room, frame);
        break;
      case "history":
        if (room) this._onHistory(room, frame);
        break;
      case "presence": {
        if (!room) break;
        let typing = false;
        for (const username of room.applyPresence(frame)) typing = room.typing.delete(username) || typing;
        if (typing) this._emit("typing", room);
        this._emit("members", room);
        break;
      }
      case "members":
        if (!room || typeof frame.id !== "string" || frame.id !== room.membersRequest) break;
        room.membersRequest = null;
        room.applyMembersPage(frame);
        this._emit("members", room);
        break;
      case "typing":
        if (!room) break;
        if (frame.active) room.typing.set(frame.user.username, frame.user);
        else room.typing.delete(frame.user.username);
        this._emit("typing", room);
        break;
      case "data":
        if (!room) break;
        room.setValue(frame);
        this._emit("values", room, frame.topic);
        break;
      case "read":
        if (typeof frame.id === "string") this._reads.delete(frame.id);
        this._onRead(frame.room, frame.seq);
        break;
      case "mentions":
        replaceMentions(this.mentions, frame.mentions, this.user && this.user.username);
        this._emit("mentions");
        break;
      case "mention":
        this._onMention(frame);
        break;
      case "search":
        if (typeof frame.id === "string" && this._searches.delete(frame.id)) this._emit("search", frame.id, searchResults(frame));
        break;
      case "error":
        this._onError(frame);
        break;
      default:
        break;
    }
  }

  _onMention(frame) {
    const message = frame.message;
    if (!addMention(this.mentions, frame.room, message, this.user && this.user.username)) return;
    this._emit("mentions");
    this._emit("mention", frame.room, message);
  }

  /** A held message changed: so may the mention of you it holds. */
  _mentionChanged(room, message) {
    if (updateMessage(this.mentions, room.name, message, this.user && this.user.username)) this._emit("mentions");
  }

  _onJoined(room, frame) {
    const resumed = frame.recovered && frame.epoch === room.epoch;
    room.joined = true;
    // What was sent on the previous connection may not have arrived: the marker is the
    // server's, and the window sends it again if it is still behind.
    room.readSent = 0;
    const read = Number.isSafeInteger(frame.read) && frame.read >= 0 ? frame.read : 0;
    if (room.epoch !== null && frame.epoch !== room.epoch) {
      // A new log (its seqs are other messages): only the server's marker holds.
      room.read = null;
      this.mentions.markers.delete(room.name);
    }
    room.read = Math.max(read, room.read || 0, this.mentions.markers.get(room.name) || 0);
    if (moveMarker(this.mentions, room.name, room.read)) this._emit("mentions");
    room.resetMembers(frame);
    room.typing.clear();
    // Each value is someone else's: one that does not decode shows as invalid, and
    // neither it nor a malformed series stops the other topics or the join.
    for (const [topic, event] of Object.entries(frame.values || {})) {
      try {
        this._joinValue(room, topic, event);
      } catch (err) {
        const value = { kind: "invalid", reason: `it could not be read (${err.message})`, raw: "" };
        room.values.set(topic, { value, user: { username: "?" }, ts: 0, series: [] });
      }
    }
    if (resumed) {
      const changes = Array.isArray(frame.changes) ? frame.changes : [];
      const acked = this._ackChanges(room, changes);
      const gap = applyGap(room, frame.history, changes);
      room._extendLive();
      for (const message of frame.history) {
        if (room.pending.delete(message.id)) this._emit("pending", room);
      }
      for (const message of gap.added) this._emitMessage(room, message);
      const changed = new Set(gap.changed.map((m) => m.seq));
      for (const message of gap.changed) {
        this._emit("changed", room, message);
        this._mentionChanged(room, message);
      }
      for (const seq of acked) if (!changed.has(seq)) this._changedLocally(room, seq);
    } else {
      // Islands go too: what is held is one segment, the recent messages.
      resetMessages(room, frame.history, frame.seq, frame.epoch === room.epoch);
      room.ranges = [[room.messages.length ? room.messages[0].seq : 1, room.seq]];
      for (const message of room.messages) room.pending.delete(message.id);
      this._emit("reset", room);
    }
    room.epoch = frame.epoch;
    this._emit("read", room.name);
    this._emit("members", room);
    this._emit("typing", room);
    this._emit("values", room);
    for (const sent of room.pending.values()) this._write(sent);
    for (const change of room.changing.values()) this._write(change);
  }

  /** Forget this user's requests that `changes` acknowledge; returns their targets. */
  _ackChanges(room, changes) {
    const me = this.user && this.user.username;
    const targets = new Set();
    for (const change of changes) {
      const request = room.changing.get(change.id);
      if (request && change.user && change.user.username === me) {
        room.changing.delete(change.id);
        targets.add(request.seq);
      }
    }
    return targets;
  }

  _joinValue(room, topic, event) {
    const known = room.values.get(topic);
    if (known && known.ts >= event.ts) return;
    const latest = { ...event, topic, value: decodeValue(event.value, []) };
    for (const point of Array.isArray(event.series) ? event.series : []) {
      if (!Array.isArray(point) || typeof point[1] !== "number" || !(point[0] < event.ts)) continue;
      room.setValue({ ...latest, ts: point[0], value: { kind: "json", value: point[1] } });
    }
    room.setValue(latest);
  }

  _onMessage(room, message) {
    if (room.pending.delete(message.id)) this._emit("pending", room);
    const { added, changed } = addMessage(room, message);
    room._extendLive();
    if (!added) return;
    this._emitMessage(room, added);
    for (const copy of changed) this._emit("changed", room, copy);
  }

  _emitMessage(room, message) {
    if (message.user && room.typing.delete(message.user.username)) this._emit("typing", room);
    this._emit("message", room, message);
  }

  _onChange(room, change) {
    const acked = this._ackChanges(room, [change]);
    const copy = applyChange(room, change);
    room._extendLive();
    if (copy) {
      this._emit("changed", room, copy);
      this._mentionChanged(room, copy);
    } else for (const seq of acked) this._changedLocally(room, seq);
  }

  /** A history page or window: its messages join those held, and what it covers the segments. */
  _onHistory(room, frame) {
    const request = room.requests.get(frame.id);
    if (!request) return; // not asked on this connection (or answered already)
    room.requests.delete(frame.id);
    const messages = (Array.isArray(frame.messages) ? frame.messages : [])
      .filter((m) => m && typeof m === "object" && Number.isSafeInteger(m.seq) && m.seq > 0)
      .filter((m) => request.before === undefined || m.seq < request.before)
      .sort((a, b) => a.seq - b.seq);
    const [lo, hi] = pageCoverage(request, messages, room.seq);
    const { added, changed } = mergePage(room, messages);
    room.ranges = cover(room.ranges, lo, hi);
    this._emit("loaded", room, added, request);
    for (const copy of changed) {
      this._emit("changed", room, copy);
      this._mentionChanged(room, copy);
    }
  }

  _onError(frame) {
    if (typeof frame.id === "string" && this._searches.delete(frame.id)) this._emit("searchFailed", frame.id);
    const reading = typeof frame.id === "string" ? this._reads.get(frame.id) : undefined;
    if (reading !== undefined) {
      // A read marker not taken (the room was left meanwhile, say): nothing to tell the
      // person; the window sends it again while they look at the room.
      this._reads.delete(frame.id);
      const room = this.rooms.get(reading);
      if (room) room.readSent = 0;
      return;
    }
    const room = frame.room !== undefined ? this.rooms.get(frame.room) : undefined;
    const retry = frame.code === "rate_limited" || frame.code === "unavailable";
    const waiting = room && (room.pending.has(frame.id) ? room.pending : room.changing.has(frame.id) ? room.changing : null);
    if (retry && waiting) {
      const timer = setTimeout(() => {
        this._retries.delete(timer);
        const request = waiting.get(frame.id);
        if (request && room.joined) this._write(request);
      }, 1000 * (frame.retry_after || 0.1));
      this._retries.add(timer);
      return;
    }
    // The refused request goes with the error (as `request`), so the window can say
    // what was refused.
    const sent = room && frame.id ? room.pending.get(frame.id) : undefined;
    if (sent) {
      room.pending.delete(frame.id);
      this._emit("pending", room);
    }
    const change = room && frame.id ? room.changing.get(frame.id) : undefined;
    if (change) {
      room.changing.delete(frame.id);
      this._changedLocally(room, change.seq);
    }
    if (room && frame.id && frame.id === room.membersRequest) {
      // A page refused (a server that pages no members, say): no more are asked for.
      room.membersRequest = null;
      room.membersAfter = null;
      this._emit("members", room);
    }
    const asked = room && frame.id ? room.requests.get(frame.id) : undefined;
    if (asked) room.requests.delete(frame.id);
    const request = sent || change || (asked && { op: "history", ...asked });
    this._emit("error", request ? { ...frame, request } : frame);
  }
}
