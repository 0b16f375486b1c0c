// HTTP to the chat server, for attachments: where it is and how to authenticate (as the
// socket does: the login cookie, and the page's token on the extension host; the hub
// service by its own cookie), fetching an attachment's bytes (cached, bounded), and
// uploading a file with progress and cancel (XMLHttpRequest: fetch has no upload
// progress). See docs/protocol.md, "Attachments".

/** Attachments are at most this big unless the server's `hello` says otherwise. */
export const DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024;
// Bytes of fetched attachments kept in memory for redraws (least recently used go first).
const CACHE_BYTES = 64 * 1024 * 1024;

function xsrfCookie() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/**
 * The chat server's HTTP side: `base` is its base URL (ending in "/"); `token` the page's
 * token if it has one (the extension host); `credentials` "include" for a hub service.
 */
export class ChatHttp {
  constructor(base, { token = "", credentials = "same-origin" } = {}) {
    this.base = new URL(String(base).replace(/\/?$/, "/"), window.location.href).toString();
    this.token = token;
    this.credentials = credentials;
  }

  /** The HTTP side of a chat WebSocket URL (`…/chat-ext/ws?token=…`). */
  static fromSocketUrl(wsUrl) {
    const url = new URL(wsUrl, window.location.href);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    const token = url.searchParams.get("token") || "";
    url.search = "";
    url.pathname = url.pathname.replace(/chat-ext\/ws$/, "");
    return new ChatHttp(url.toString(), { token });
  }

  /**
   * The absolute address of an attachment's `url` (relative to the base), or null when
   * it would lead anywhere but this server's attachments: a message is untrusted, and
   * this page's credentials go with the request.
   */
  attachmentUrl(relative) {
    if (typeof relative !== "string" || relative.length > 4096) return null;
    let url;
    try {
      url = new URL(relative, this.base);
    } catch (err) {
      return null;
    }
    const home = new URL("chat-ext/attachments/", this.base);
    return url.origin === home.origin && url.pathname.startsWith(home.pathname) ? url.toString() : null;
  }

  /** The headers that authenticate a request from this page (token, XSRF). */
  headers() {
    const headers = {};
    if (this.token) headers.Authorization = `token ${this.token}`;
    const xsrf = xsrfCookie();
    if (xsrf) headers["X-XSRFToken"] = xsrf;
    return headers;
  }

  /** GET an attachment (an absolute URL from attachmentUrl) as a Blob; throws with a reason. */
  async fetchBlob(url) {
    let response;
    try {
      response = await fetch(url, { headers: this.headers(), credentials: this.credentials });
    } catch (err) {
      throw new Error("the chat server could not be reached");
    }
    if (!response.ok) {
      const reasons = { 401: "you are not logged in", 403: "you may not read it", 404: "it is gone (deleted, or not in this room)" };
      throw new Error(reasons[response.status] || `the server answered ${response.status}`);
    }
    return response.blob();
  }
}

const cache = new Map(); // url -> {blob: Promise<Blob>, size, objectUrl}
let cached = 0;

function forget(url) {
  const entry = cache.get(url);
  if (!entry) return;
  cache.delete(url);
  cached -= entry.size;
  if (entry.objectUrl) URL.revokeObjectURL(entry.objectUrl);
}

/** An attachment's bytes as a Blob, fetched once and kept while others fit (see CACHE_BYTES). */
export function attachmentBlob(http, url) {
  let entry = cache.get(url);
  if (entry) {
    cache.delete(url); // most recently used last
    cache.set(url, entry);
    return entry.blob;
  }
  entry = { blob: http.fetchBlob(url), size: 0, objectUrl: null };
  cache.set(url, entry);
  entry.blob.then(
    (blob) => {
      entry.size = blob.size;
      cached += blob.size;
      for (const old of cache.keys()) {
        if (cached <= CACHE_BYTES || old === url) break;
        forget(old);
      }
    },
    () => forget(url), // a failure is not kept: the next attempt fetches again
  );
  return entry.blob;
}

/** A blob: URL of an attachment (as `type`, which an <img> needs for SVG), kept with its bytes. */
export async function attachmentObjectUrl(http, url, type) {
  const blob = await attachmentBlob(http, url);
  const entry = cache.get(url);
  if (entry && entry.objectUrl) return entry.objectUrl;
  const typed = type && blob.type !== type ? new Blob([blob], { type }) : blob;
  // An SVG can carry script. As an <img> it runs none, but a blob: URL belongs to this
  // page's origin: opened in a tab of its own ("open image in new tab") the SVG would
  // run there, with the page's cookies. A data: URL has no origin of ours (and the
  // browser will not open it as a page).
  const objectUrl = typed.type === SVG_TYPE ? svgDataUrl(new Uint8Array(await typed.arrayBuffer())) : URL.createObjectURL(typed);
  if (entry) entry.objectUrl = objectUrl;
  return objectUrl;
}

const SVG_TYPE = "image/svg+xml";

/** An SVG's bytes as a data: URL (see attachmentObjectUrl for why never a blob: URL). */
export function svgDataUrl(bytes) {
  let text = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(start, start + 0x8000));
  }
  return `data:${SVG_TYPE};base64,${btoa(text)}`;
}

/** Save a Blob as a file named `name` (the browser's download). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The refusal an upload got, as {code, message} (the server's JSON, or what the status says). */
function refusal(xhr) {
  try {
    const answer = JSON.parse(xhr.responseText);
    if (answer && typeof answer.code === "string") return { code: answer.code, message: String(answer.message || answer.code) };
  } catch (err) {
    // not JSON: a proxy's page, say
  }
  const codes = { 401: "unauthenticated", 403: "forbidden", 413: "attachment_too_large", 429: "rate_limited" };
  return { code: codes[xhr.status] || "upload_failed", message: `the server answered ${xhr.status}` };
}

/**
 * Upload `file` (a File or Blob with `name` and `type`) to `room`. Returns
 * {promise, abort}: the promise resolves with the server's answer ({upload, sha256,
 * size, mime, name}) or rejects with an Error carrying `code` ("aborted" when
 * cancelled); `onProgress(sent, total)` follows the upload.
 */
export function uploadFile(http, room, file, { onProgress = () => {}, XHR = globalThis.XMLHttpRequest } = {}) {
  const xhr = new XHR();
  const promise = new Promise((resolve, reject) => {
    const fail = (code, message) => reject(Object.assign(new Error(message), { code }));
    const url = new URL("chat-ext/attachments", http.base);
    url.searchParams.set("room", room);
    xhr.open("POST", url.toString());
    xhr.withCredentials = http.credentials === "include";
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.setRequestHeader("X-Chat-Name", encodeURIComponent(file.name || "file"));
    for (const [name, value] of Object.entries(http.headers())) xhr.setRequestHeader(name, value);
    if (xhr.upload) xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onload = () => {
      if (xhr.status === 201 || xhr.status === 200) {
        try {
          const answer = JSON.parse(xhr.responseText);
          if (answer && typeof answer.upload === "string") return resolve(answer);
        } catch (err) {
          // fall through: an answer that is not the server's
        }
        return fail("upload_failed", "the server's answer to the upload could not be read");
      }
      const { code, message } = refusal(xhr);
      return fail(code, message);
    };
    xhr.onerror = () => fail("unavailable", "the chat server could not be reached");
    xhr.onabort = () => fail("aborted", "cancelled");
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}
