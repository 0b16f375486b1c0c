// The Chat widget's anywidget module: opens its own WebSocket from the browser (one per
// widget model, shared by its views), so the chat keeps working while the kernel is busy
// or dead.
import { ChatConnection } from "./connection.js";
import { announceIdentityChange, onIdentityChange, setDisplayName } from "./identity.js";
import { ChatHttp } from "./transfer.js";
import { ChatView } from "./view.js";

function pageConfig() {
  const node = document.getElementById("jupyter-config-data");
  try {
    return node ? JSON.parse(node.textContent || "{}") : {};
  } catch (err) {
    return {};
  }
}

/** The WebSocket URL: `url` if the kernel side set one, else this page's server. */
export function chatUrl(explicit) {
  const config = pageConfig();
  const base = explicit || config.baseUrl || "/";
  const url = new URL(`${base.replace(/\/?$/, "/")}chat-ext/ws`, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (!explicit && config.token) url.searchParams.set("token", config.token);
  return url.toString();
}

/**
 * Ask this page's server for a signed, short-lived copy of the viewer's identity and
 * hand it to the kernel, so what the kernel sends shows as sent by this person.
 * Returns the number of seconds it is valid, or 0 if none was obtained.
 */
async function delegateToKernel(model) {
  const config = pageConfig();
  const url = new URL(`${(config.baseUrl || "/").replace(/\/?$/, "/")}chat-ext/delegation`, window.location.href);
  const headers = {};
  if (config.token) headers.Authorization = `token ${config.token}`;
  const xsrf = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  if (xsrf) headers["X-XSRFToken"] = decodeURIComponent(xsrf[1]);
  try {
    const response = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
    if (!response.ok) return 0;
    const answer = await response.json();
    model.send({ kind: "delegation", delegation: answer.delegation });
    return answer.expires_in;
  } catch (err) {
    return 0;
  }
}

/**
 * A chat service elsewhere on the Hub (not this page's server) authenticates browsers
 * with its own OAuth cookie: fetching its root follows the same-origin redirects of
 * the Hub's login, which sets that cookie, before the WebSocket opens.
 */
function serviceLogin(serviceUrl) {
  return async () => {
    const base = new URL(serviceUrl.replace(/\/?$/, "/"), window.location.href);
    // no-cors: a plain same-origin GET, which the Hub accepts with cookies and no XSRF
    // token; the response is opaque, but the login cookie it leads to is what we need.
    await fetch(base, { credentials: "include", mode: "no-cors" });
  };
}

/**
 * What one widget model owns, whatever number of views show it: the connection, the
 * identity lent to the kernel (renewed on a timer) and the listener for renames made in
 * other windows. A view attaches to it in `render` and detaches in its cleanup.
 */
class ChatModel {
  constructor(model) {
    this.model = model;
    this.views = new Map(); // el -> ChatView
    this.delegations = 0;
    this._onRoom = () => {
      for (const view of this.views.values()) view.openRoom(model.get("room"));
    };
    this._onUrl = () => {
      this._stop();
      this._start();
      for (const el of this.views.keys()) this._draw(el);
    };
    model.on("change:room", this._onRoom);
    model.on("change:url", this._onUrl);
    this._start();
  }

  /** Open the connection to `url` (or this page's server) and lend the kernel our identity. */
  _start() {
    const service = this.model.get("url");
    const options = service ? { beforeConnect: serviceLogin(service) } : {};
    const conn = new ChatConnection(chatUrl(service), options);
    this.conn = conn;
    // Attachments go over HTTP to the same server, authenticated as the socket is: this
    // page's token and login cookie, or the hub service's own cookie.
    const config = pageConfig();
    this.http = service
      ? new ChatHttp(service, { credentials: "include" })
      : new ChatHttp(config.baseUrl || "/", { token: config.token || "" });
    this._renewal = null;
    this._stopListening = () => {};
    // Your name is this page's server's to keep (jupyter_server's identity API); a
    // Hub-wide service takes names from the Hub, so there is no renaming there.
    this._rename = service ? null : (name) => this._renameTo(name);
    conn.open();
    if (service) return;
    this._delegate().then((seconds) => {
      if (seconds > 0 && this.conn === conn) {
        this._renewal = setInterval(() => this._delegate(), (seconds * 1000) / 3);
      }
    });
    // Renamed in another window of yours: this one and its kernel follow.
    this._stopListening = onIdentityChange(() => this._followIdentity());
  }

  _stop() {
    this._stopListening();
    clearInterval(this._renewal);
    this.conn.close();
  }

  async _renameTo(name) {
    const config = pageConfig();
    const xsrf = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    const options = { baseUrl: config.baseUrl || "/", token: config.token || "" };
    if (xsrf) options.xsrf = decodeURIComponent(xsrf[1]);
    const newName = await setDisplayName(name, options);
    // No other window hears about it (and neither does this one): follow here.
    if (!announceIdentityChange()) this._followIdentity();
    return newName;
  }

  _followIdentity() {
    this.conn.reconnect();
    this._delegate();
  }

  async _delegate() {
    const seconds = await delegateToKernel(this.model);
    if (seconds > 0) {
      // How many identities this widget has lent its kernel, on every view's element:
      // what a test (or a person debugging) can wait for before running a cell.
      this.delegations += 1;
      for (const el of this.views.keys()) el.dataset.delegations = String(this.delegations);
    }
    return seconds;
  }

  /** (Re)draw the view in `el` on the current connection. */
  _draw(el) {
    const previous = this.views.get(el);
    if (previous) previous.destroy();
    const model = this.model;
    const options = { room: model.get("room"), height: model.get("height"), rename: this._rename, http: this.http };
    this.views.set(el, new ChatView(el, this.conn, options));
  }

  /** Show the chat in `el`; returns the function that removes it again. */
  attach(el) {
    if (this.delegations) el.dataset.delegations = String(this.delegations);
    this._draw(el);
    return () => {
      const view = this.views.get(el);
      this.views.delete(el);
      if (view) view.destroy();
    };
  }

  close() {
    this.model.off("change:room", this._onRoom);
    this.model.off("change:url", this._onUrl);
    for (const view of this.views.values()) view.destroy();
    this.views.clear();
    this._stop();
  }
}

// anywidget calls this once per widget model; `initialize` then runs once for the model
// and `render` once per view of it (each output showing it), so the views of one model
// share one ChatModel, and with it one connection.
export default () => {
  let chat = null;
  return {
    initialize({ model }) {
      chat = new ChatModel(model);
      return () => {
        chat.close();
        chat = null;
      };
    },
    render({ el }) {
      return chat.attach(el);
    },
  };
};
