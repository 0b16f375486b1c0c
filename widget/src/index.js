// The Chat widget's anywidget module: opens its own WebSocket from the browser, so the
// chat keeps working while the kernel is busy or dead.
import { ChatConnection } from "./connection.js";
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

export default {
  render({ model, el }) {
    const conn = new ChatConnection(chatUrl(model.get("url")));
    const view = new ChatView(el, conn, { room: model.get("room"), height: model.get("height") });
    const onRoom = () => view.openRoom(model.get("room"));
    model.on("change:room", onRoom);
    conn.open();
    return () => {
      model.off("change:room", onRoom);
      view.destroy();
      conn.close();
    };
  },
};
