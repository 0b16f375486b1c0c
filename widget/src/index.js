// The Chat widget's anywidget module: opens its own WebSocket from the browser, so the
// chat keeps working while the kernel is busy or dead.
import { ChatConnection } from "./connection.js";
import { announceIdentityChange, onIdentityChange, setDisplayName } from "./identity.js";
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
async function delegateToKernel(model, el) {
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
    // How many identities this view has lent its kernel: what a test (or a person
    // debugging) can wait for before running a cell that should speak as them.
    el.dataset.delegations = String(Number(el.dataset.delegations || 0) + 1);
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

export default {
  render({ model, el }) {
    const service = model.get("url");
    const conn = new ChatConnection(chatUrl(service), service ? { beforeConnect: serviceLogin(service) } : {});
    // Your name is this page's server's to keep (jupyter_server's identity API); a
    // Hub-wide service takes names from the Hub, so there is no renaming there.
    const rename = service
      ? null
      : async (name) => {
          const config = pageConfig();
          const xsrf = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
          const options = { baseUrl: config.baseUrl || "/", token: config.token || "" };
          if (xsrf) options.xsrf = decodeURIComponent(xsrf[1]);
          const newName = await setDisplayName(name, options);
          if (!announceIdentityChange()) {
            // No other window hears about it (and neither does this one): follow here.
            conn.reconnect();
            delegateToKernel(model, el);
          }
          return newName;
        };
    const view = new ChatView(el, conn, { room: model.get("room"), height: model.get("height"), rename });
    const onRoom = () => view.openRoom(model.get("room"));
    model.on("change:room", onRoom);
    conn.open();
    let renewal = null;
    let stopListening = () => {};
    if (!service) {
      delegateToKernel(model, el).then((seconds) => {
        if (seconds > 0) {
          renewal = setInterval(() => delegateToKernel(model, el), (seconds * 1000) / 3);
        }
      });
      // Renamed in another window of yours: this one and its kernel follow.
      stopListening = onIdentityChange(() => {
        conn.reconnect();
        delegateToKernel(model, el);
      });
    }
    return () => {
      stopListening();
      clearInterval(renewal);
      model.off("change:room", onRoom);
      view.destroy();
      conn.close();
    };
  },
};
