import { decodeValue, unpackBinary } from "./values.js";

// The browser's chat connection: one WebSocket, any number of rooms, protocol v1.
// It reconnects with jittered backoff, resumes every room from the last seq it saw,
// resends unacknowledged messages with their original ids (the server drops
// duplicates) and keeps messages de-duplicated and ordered by seq.

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 10000;
const OFFLINE_AFTER_ATTEMPTS = 4;
const SERIES_LENGTH = 60;

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
    this.messages = []; // sorted by seq, no duplicates
    this.holders = 0; // how many windows (views) show this room; it is left at zero
    this.pending = new Map(); // id -> body, sent but not acknowledged
    this.members = new Map(); // username -> user
    this.typing = new Map(); // username -> user
    this.values = new Map(); // topic -> {value, user, ts, series: [[ts, number]]}
    this.loadingEarlier = false;
    this.reachedStart = false;
  }

  get firstSeq() {
    return this.messages.length ? this.messages[0].seq : this.seq + 1;
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
 * state, hello, reset (room), message (room, msg), earlier (room, msgs), members (room),
 * typing (room), values (room, topic; no topic: all of them), pending (room),
 * error (frame), undecodable (reason: a frame from the server that could not be read).
 * `WebSocketImpl` replaces the browser's WebSocket (tests pass a fake one).
 */
export class ChatConnection {
  constructor(url, { beforeConnect, WebSocketImpl } = {}) {
    this.url = url;
    this._beforeConnect = beforeConnect || null;
    this._WebSocket = WebSocketImpl || globalThis.WebSocket;
    this.state = "connecting";
    this.user = null;
    this.limits = null;
    this.rooms = new Map();
    this._listeners = new Map();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._closed = false;
    this._opening = false;
    this._retries = new Set(); // timers resending a message the server asked to retry
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
      for (const room of this.rooms.values()) room.joined = false;
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
    for (const room of this.rooms.values()) room.joined = false;
    clearTimeout(this._timer);
    this._attempt = 0;
    this.open();
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

  send(roomName, body) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    const id = newId();
    room.pending.set(id, body);
    this._emit("pending", room);
    if (room.joined) this._write({ op: "send", room: roomName, id, body });
    return id;
  }

  typing(roomName, active) {
    const room = this.rooms.get(roomName);
    if (room && room.joined) this._write({ op: "typing", room: roomName, active });
  }

  loadEarlier(roomName, limit = 50) {
    const room = this.rooms.get(roomName);
    if (!room || !room.joined || room.loadingEarlier || room.reachedStart) return;
    if (room.firstSeq <= 1) {
      room.reachedStart = true;
      return;
    }
    room.loadingEarlier = true;
    this._write({ op: "history", room: roomName, id: newId(), before: room.firstSeq, limit });
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
        this.limits = frame.limits;
        this._attempt = 0;
        this._setState("connected");
        this._emit("hello", frame);
        for (const r of this.rooms.values()) this._sendJoin(r);
        break;
      case "joined":
        if (room) this._onJoined(room, frame);
        break;
      case "message":
        if (room) this._onMessage(room, frame);
        break;
      case "history":
        if (room) this._onEarlier(room, frame.messages);
        break;
      case "presence":
        if (!room) break;
        if (frame.joined) room.members.set(frame.joined.username, frame.joined);
        if (frame.left) {
          room.members.delete(frame.left.username);
          if (room.typing.delete(frame.left.username)) this._emit("typing", room);
        }
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
      case "error":
        this._onError(frame);
        break;
      default:
        break;
    }
  }

  _onJoined(room, frame) {
    const resumed = frame.recovered && frame.epoch === room.epoch;
    room.joined = true;
    room.members = new Map(frame.members.map((u) => [u.username, u]));
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
      for (const message of frame.history) this._onMessage(room, message);
    } else {
      room.messages = frame.history.slice();
      room.reachedStart = room.messages.length === 0 || room.messages[0].seq <= 1;
      for (const message of room.messages) room.pending.delete(message.id);
      room.seq = Math.max(frame.seq, room.messages.length ? room.messages.at(-1).seq : 0);
      this._emit("reset", room);
    }
    room.epoch = frame.epoch;
    this._emit("members", room);
    this._emit("typing", room);
    this._emit("values", room);
    for (const [id, body] of room.pending) {
      this._write({ op: "send", room: room.name, id, body });
    }
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
    if (message.seq <= room.seq) return;
    room.seq = message.seq;
    room.messages.push(message);
    if (room.typing.delete(message.user.username)) this._emit("typing", room);
    this._emit("message", room, message);
  }

  _onEarlier(room, messages) {
    room.loadingEarlier = false;
    const first = room.firstSeq;
    const older = messages.filter((m) => m.seq < first);
    if (older.length === 0 || older[0].seq <= 1) room.reachedStart = true;
    room.messages = older.concat(room.messages);
    this._emit("earlier", room, older);
  }

  _onError(frame) {
    const room = frame.room !== undefined ? this.rooms.get(frame.room) : undefined;
    const retry = frame.code === "rate_limited" || frame.code === "unavailable";
    if (retry && room && room.pending.has(frame.id)) {
      const body = room.pending.get(frame.id);
      const timer = setTimeout(() => {
        this._retries.delete(timer);
        if (room.pending.has(frame.id)) {
          this._write({ op: "send", room: room.name, id: frame.id, body });
        }
      }, 1000 * (frame.retry_after || 0.1));
      this._retries.add(timer);
      return;
    }
    if (room && frame.id && room.pending.delete(frame.id)) this._emit("pending", room);
    if (room && room.loadingEarlier) room.loadingEarlier = false;
    this._emit("error", frame);
  }
}
