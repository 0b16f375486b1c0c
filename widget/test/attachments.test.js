import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { FakeSocket, installPage } from "./page.js";

// Attachments in a page (jsdom): how each kind is drawn from bytes fetched over HTTP
// (fetch is played by the test), that untrusted fields never break a message, and the
// composer's upload (XMLHttpRequest played by the test) up to the `send` that carries it.
const window = installPage(undefined, "http://lab.example/user/alice/lab");
const { attachmentNode, bundleNode, compareCells, describe, fileName, htmlFrame, tableCsv } = await import("../src/attachments.js");
const { ChatHttp, uploadFile } = await import("../src/transfer.js");
const { decodePacked } = await import("../src/values.js");
const { ChatConnection } = await import("../src/connection.js");
const { ChatView } = await import("../src/view.js");

const http = new ChatHttp("/user/alice/", { token: "tok" });
const VALUE_MIME = "application/vnd.jupyter-chat-ext.value";
const BUNDLE_MIME = "application/vnd.jupyter-chat-ext.bundle+json";
const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0]);

/** jupyter_chat_ext.values.pack(): [u32 length][{"sizes", "value"}][buffers]. */
function packed(tree, buffers = []) {
  const header = new TextEncoder().encode(JSON.stringify({ sizes: buffers.map((b) => b.byteLength), value: tree }));
  const bytes = new Uint8Array(4 + header.length + buffers.reduce((n, b) => n + b.byteLength, 0));
  new DataView(bytes.buffer).setUint32(0, header.length, false);
  bytes.set(header, 4);
  let offset = 4 + header.length;
  for (const buffer of buffers) {
    bytes.set(new Uint8Array(buffer), offset);
    offset += buffer.byteLength;
  }
  return bytes.buffer;
}

const TABLE = packed(
  {
    $dataframe: {
      columns: ["name", "score"],
      data: [{ $values: { dtype: "object", values: ["b", "=cmd()", "a"] } }, { $ndarray: { dtype: "<f8", shape: [3], buffer: 0 } }],
      index: { $range: [0, 3, 1] },
    },
  },
  [new Float64Array([2.5, -1, 10]).buffer],
);

let served; // url -> {body, type, status}
let requests;

beforeEach(() => {
  served = new Map();
  requests = [];
  globalThis.fetch = async (url, options) => {
    requests.push({ url: String(url), options });
    const entry = served.get(String(url));
    if (!entry) return new Response("{}", { status: 404 });
    return new Response(entry.body, { status: entry.status || 200, headers: { "Content-Type": entry.type } });
  };
});

function serve(seq, body, type) {
  const url = `http://lab.example/user/alice/chat-ext/attachments/${seq}?room=general`;
  served.set(url, { body, type });
  return `chat-ext/attachments/${seq}?room=general`;
}

/** Wait until `predicate()` holds (the fetch and decode are asynchronous). */
async function until(predicate, what) {
  for (let i = 0; i < 200; i++) {
    if (predicate()) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.fail(`never: ${what}`);
}

test("an image is an <img> from a blob: URL, fetched from the chat server with the page's credentials", async () => {
  const url = serve(7, PNG, "image/png");
  const node = attachmentNode({ name: "plot.png", mime: "image/png", size: 12, kind: "figure", url, preview: { width: 640, height: 480 } }, 7, http);
  await until(() => node.querySelector("img"), "the image");
  const image = node.querySelector("img");
  assert.match(image.getAttribute("src"), /^blob:/);
  assert.equal(image.getAttribute("width"), "640");
  assert.equal(requests[0].url, "http://lab.example/user/alice/chat-ext/attachments/7?room=general");
  assert.equal(requests[0].options.headers.Authorization, "token tok");
  assert.equal(requests[0].options.credentials, "same-origin");
  assert.match(node.querySelector(".jce-att-name").textContent, /plot\.png · 12 bytes · image\/png/);
  // click to enlarge: an overlay on the page, closed by Escape
  image.dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
  const overlay = window.document.querySelector(".jce-overlay");
  assert.equal(overlay.querySelector("img").getAttribute("src"), image.getAttribute("src"));
  overlay.dispatchEvent(new window.KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
  assert.equal(window.document.querySelector(".jce-overlay"), null);
});

test("a figure's SVG in its preview is shown from a data: URL, with nothing fetched", () => {
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="3" onload="globalThis.__xss=1"><rect width="4" height="3"/></svg>';
  const fetched = [];
  const quiet = { attachmentUrl: (u) => `http://server/${u}`, headers: () => ({}), credentials: "same-origin" };
  const original = globalThis.fetch;
  globalThis.fetch = async (url) => {
    fetched.push(url);
    throw new Error("no fetch expected");
  };
  try {
    const info = { name: "figure.png", mime: "image/png", size: 10, kind: "figure", url: "chat-ext/attachments/ab?room=r", preview: { width: 4, height: 3, svg } };
    const node = attachmentNode(info, 3, quiet);
    const image = node.querySelector("img");
    assert.match(image.src, /^data:image\/svg\+xml;base64,/);
    assert.equal(node.querySelector("svg, script"), null);
    assert.deepEqual(fetched, []);
    assert.equal(globalThis.__xss, undefined);
  } finally {
    globalThis.fetch = original;
  }
});

test("an SVG with script is never inline DOM nor on our origin: an <img> of a data: URL", async () => {
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" onload="globalThis.__xss=1"><script>globalThis.__xss=1</script></svg>';
  const url = serve(8, svg, "image/svg+xml");
  const node = attachmentNode({ name: "x.svg", mime: "image/svg+xml", size: svg.length, kind: "figure", url }, 8, http);
  await until(() => node.querySelector("img"), "the image");
  assert.equal(node.querySelector("svg, script"), null);
  // Not a blob: URL, which is this page's origin: opened in a tab it would run there.
  const src = node.querySelector("img").src;
  assert.match(src, /^data:image\/svg\+xml;base64,/);
  assert.equal(Buffer.from(src.split(",")[1], "base64").toString(), svg);
  const inBundle = bundleNode({ "image/svg+xml": svg }, "fig");
  assert.match(inBundle.src, /^data:image\/svg\+xml;base64,/);
  assert.equal(globalThis.__xss, undefined);
});

test("a table is sortable by its columns and downloads as CSV (formulas quoted)", async () => {
  const url = serve(9, TABLE, VALUE_MIME);
  const node = attachmentNode({ name: "df", mime: VALUE_MIME, size: TABLE.byteLength, kind: "table", url }, 9, http);
  await until(() => node.querySelector("table"), "the table");
  const rows = () => [...node.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((c) => c.textContent));
  assert.deepEqual(rows(), [["0", "b", "2.5"], ["1", "=cmd()", "-1"], ["2", "a", "10"]]);
  const [, byName, byScore] = node.querySelectorAll("thead th");
  byScore.querySelector("button").click();
  assert.deepEqual(rows().map((r) => r[2]), ["-1", "2.5", "10"]);
  assert.equal(byScore.getAttribute("aria-sort"), "ascending");
  byScore.querySelector("button").click();
  assert.deepEqual(rows().map((r) => r[2]), ["10", "2.5", "-1"]);
  byName.querySelector("button").click();
  assert.deepEqual(rows().map((r) => r[1]), ["=cmd()", "a", "b"]);
  assert.equal(byScore.getAttribute("aria-sort"), "none");
  assert.ok(node.querySelector(".jce-att-csv"));
  assert.equal(tableCsv(decodePacked(TABLE)), ',name,score\r\n0,b,2.5\r\n1,\'=cmd(),-1\r\n2,a,10\r\n');
});

test("an array shows dtype, shape and statistics, with a line (1-D) or a heatmap (2-D)", async () => {
  const line = packed({ $ndarray: { dtype: "<f4", shape: [4], buffer: 0 } }, [new Float32Array([1, 2, NaN, 5]).buffer]);
  const node = attachmentNode({ name: "a", mime: VALUE_MIME, kind: "array", url: serve(10, line, VALUE_MIME) }, 10, http);
  await until(() => node.querySelector(".jce-att-array"), "the array");
  assert.equal(node.querySelector(".jce-att-summary").textContent, "float32, shape (4,)");
  assert.match(node.querySelector(".jce-value-stats").textContent, /min 1 · mean 2\.66667 · max 5/);
  assert.ok(node.querySelector("svg.jce-sparkline"));
  const grid = packed({ $ndarray: { dtype: "<i8", shape: [2, 3], buffer: 0 } }, [new BigInt64Array([1n, 2n, 3n, 4n, 5n, 6n]).buffer]);
  const model = decodePacked(grid);
  assert.deepEqual(model.grid, { rows: 2, columns: 3, cells: [1, 2, 3, 4, 5, 6] });
  const matrix = attachmentNode({ name: "m", mime: VALUE_MIME, kind: "array", url: serve(11, grid, VALUE_MIME) }, 11, http);
  await until(() => matrix.querySelector("canvas.jce-heatmap"), "the heatmap");
  assert.equal(matrix.querySelector(".jce-att-summary").textContent, "int64, shape (2, 3)");
});

test("a value that does not decode says why; the attachment still has its name and tools", async () => {
  const node = attachmentNode({ name: "bad", mime: VALUE_MIME, kind: "table", url: serve(12, new Uint8Array([0, 0, 9, 9, 1]), VALUE_MIME) }, 12, http);
  await until(() => node.querySelector(".jce-att-invalid"), "the reason");
  assert.match(node.querySelector(".jce-att-invalid").textContent, /header length is past its end/);
  assert.ok(node.querySelector(".jce-att-download"));
});

test("a fetch refused says so, with a retry", async () => {
  const node = attachmentNode({ name: "gone.png", mime: "image/png", kind: "image", url: "chat-ext/attachments/99?room=general" }, 99, http);
  await until(() => node.querySelector(".jce-att-retry"), "the retry button");
  assert.match(node.textContent, /it is gone/);
  serve(99, PNG, "image/png");
  node.querySelector(".jce-att-retry").click();
  await until(() => node.querySelector("img"), "the image after a retry");
});

test("HTML in a bundle goes in a sandboxed frame without scripts; images in a bundle are blob <img>", async () => {
  const html = '<img src=x onerror="parent.__xss=1"><script>parent.__xss=1</script>';
  const frame = htmlFrame(html);
  assert.equal(frame.getAttribute("sandbox"), "");
  assert.match(frame.srcdoc, /^<meta http-equiv="Content-Security-Policy" content="default-src 'none';/);
  assert.ok(frame.srcdoc.endsWith(html));
  const bundle = JSON.stringify({ "text/html": html, "text/plain": "fig" });
  const node = attachmentNode({ name: "plotly", mime: BUNDLE_MIME, kind: "bundle", url: serve(13, bundle, BUNDLE_MIME) }, 13, http);
  await until(() => node.querySelector("iframe"), "the frame");
  assert.equal(node.querySelector("iframe").getAttribute("sandbox"), "");
  assert.equal(node.querySelector("script, img"), null);
  const png = bundleNode({ "image/png": Buffer.from(PNG).toString("base64"), "text/html": html }, "fig");
  assert.equal(png.tagName, "IMG");
  assert.match(png.src, /^blob:/);
  assert.equal(bundleNode({ "text/plain": ["a", "b"] }, "x").textContent, "ab");
  assert.ok(bundleNode({ "text/latex": "$$x^2$$" }, "x").querySelector(".katex"));
  assert.throws(() => bundleNode({ "application/x-unknown": 1 }, "x"), /none of its types/);
  assert.equal(globalThis.__xss, undefined);
});

test("provenance is folded under the attachment; the copy button copies chat.take(seq)", async () => {
  let copied = null;
  Object.defineProperty(globalThis, "navigator", { value: { clipboard: { writeText: async (t) => (copied = t) } }, configurable: true });
  const provenance = { notebook: "analysis/train.ipynb", execution_count: 12, code: "import numpy as np\nfig = plot()", versions: { numpy: "2.1.0", evil: { x: 1 } } };
  const node = attachmentNode({ name: "f.csv", mime: "text/csv", size: 3, kind: "file", url: serve(14, "a,b", "text/csv"), provenance }, 14, http);
  const details = node.querySelector("details.jce-att-provenance");
  assert.equal(details.open, false);
  assert.match(details.textContent, /analysis\/train\.ipynb/);
  assert.match(details.textContent, /\[12\]/);
  assert.match(details.textContent, /numpy 2\.1\.0/);
  assert.ok(details.querySelector("code.hljs .hljs-keyword"));
  const copy = [...node.querySelectorAll("button")].find((b) => b.textContent === "Copy code to load this");
  copy.click();
  await until(() => copied !== null, "the clipboard");
  assert.equal(copied, "chat.take(14)");
  assert.equal(node.querySelector(".jce-att-view"), null); // a file: name, size and download only
});

test("untrusted fields never throw and never fetch from elsewhere", async () => {
  const hostile = [
    null, 7, "x", [], {},
    { name: 5, mime: ["image/png"], size: "big", kind: { toString: 1 }, url: 3, preview: [], provenance: "x" },
    { name: "x".repeat(1_000_000), mime: "image/png", url: "https://evil.example/chat-ext/attachments/1" },
    { mime: "image/png", url: "//evil.example/x" },
    { mime: "image/png", url: "javascript:alert(1)" },
    { mime: "image/png", url: "../../other/chat-ext/attachments/1" },
    { mime: "image/png", url: "chat-ext/attachments/1", preview: { width: 1e300, height: -1 } },
    { mime: VALUE_MIME, provenance: { notebook: { a: 1 }, execution_count: -1, code: 5, versions: [1] } },
  ];
  for (const attachment of hostile) {
    const node = attachmentNode(attachment, 1, http);
    assert.ok(node.classList.contains("jce-attachment"), JSON.stringify(attachment)?.slice(0, 80));
    assert.ok(node.textContent.length < 1000);
  }
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.ok(requests.every((r) => r.url.startsWith("http://lab.example/user/alice/chat-ext/attachments/")), JSON.stringify(requests.map((r) => r.url)));
  assert.equal(describe({ kind: "weird" }).kind, "file");
  assert.equal(fileName("../../etc/passwd"), "_.._etc_passwd");
  assert.equal(fileName("\u0000"), "_");
  assert.ok(compareCells(null, 1) > 0 && compareCells(1, "a") < 0 && compareCells("a10", "a9") > 0);
});

// ---- uploading ------------------------------------------------------------------

/** An XMLHttpRequest the test answers: `respond(status, body)`, `progress(n, total)`. */
class FakeXHR {
  static made = [];
  constructor() {
    this.headers = {};
    this.upload = {};
    FakeXHR.made.push(this);
  }
  open(method, url) {
    this.method = method;
    this.url = url;
  }
  setRequestHeader(name, value) {
    this.headers[name] = value;
  }
  send(body) {
    this.body = body;
  }
  abort() {
    this.onabort();
  }
  respond(status, body) {
    this.status = status;
    this.responseText = JSON.stringify(body);
    this.onload();
  }
}

test("an upload posts the bytes with its type, name, token and XSRF header; progress and refusals come back", async () => {
  window.document.cookie = "_xsrf=2|abc%7C";
  const file = new File([PNG], "figure 1.png", { type: "image/png" });
  const seen = [];
  const upload = uploadFile(http, "lab/α", file, { onProgress: (n, total) => seen.push([n, total]), XHR: FakeXHR });
  const xhr = FakeXHR.made.at(-1);
  assert.equal(xhr.method, "POST");
  assert.equal(xhr.url, "http://lab.example/user/alice/chat-ext/attachments?room=lab%2F%CE%B1");
  assert.deepEqual(xhr.headers, { "Content-Type": "image/png", "X-Chat-Name": "figure%201.png", Authorization: "token tok", "X-XSRFToken": "2|abc|" });
  assert.equal(xhr.body, file);
  xhr.upload.onprogress({ loaded: 6, total: 12, lengthComputable: true });
  xhr.respond(201, { upload: "u-1", sha256: "f", size: 12, mime: "image/png", name: "figure 1.png" });
  assert.equal((await upload.promise).upload, "u-1");
  assert.deepEqual(seen, [[6, 12]]);

  const refused = uploadFile(http, "lab", file, { XHR: FakeXHR });
  FakeXHR.made.at(-1).respond(413, { code: "attachment_too_large", message: "too big" });
  await assert.rejects(refused.promise, (err) => err.code === "attachment_too_large");
  const cancelled = uploadFile(http, "lab", file, { XHR: FakeXHR });
  cancelled.abort();
  await assert.rejects(cancelled.promise, (err) => err.code === "aborted");
});

test("the HTTP side of a socket URL, and a hub service's cookie credentials", () => {
  const fromSocket = ChatHttp.fromSocketUrl("wss://hub.example/services/chat/chat-ext/ws?token=t1");
  assert.equal(fromSocket.base, "https://hub.example/services/chat/");
  assert.equal(fromSocket.token, "t1");
  const service = new ChatHttp("https://hub.example/services/chat", { credentials: "include" });
  assert.equal(service.attachmentUrl("chat-ext/attachments/3?room=r"), "https://hub.example/services/chat/chat-ext/attachments/3?room=r");
  assert.equal(service.attachmentUrl("chat-ext/delegation"), null);
  assert.equal(service.attachmentUrl("https://evil.example/services/chat/chat-ext/attachments/3"), null);
});

// ---- in the window: paste to share, and a message that carries an attachment ------

const ALICE = { username: "alice", name: "alice", display_name: "Alice" };
let conn;
let view;
let ws;
let el;

async function open(limits = {}) {
  FakeSocket.opened = [];
  conn = new ChatConnection("ws://lab.example/user/alice/chat-ext/ws", { WebSocketImpl: FakeSocket });
  await conn.open();
  ws = FakeSocket.opened.at(-1);
  ws.receive({ op: "hello", user: ALICE, limits: { max_message_size: 1000, ...limits } });
  el = window.document.createElement("div");
  window.document.body.append(el);
  view = new ChatView(el, conn, { room: "general", http });
  ws.receive({ op: "joined", room: "general", epoch: "e", seq: 0, recovered: false, history: [], members: [ALICE], values: {} });
}

afterEach(() => {
  if (view) view.destroy();
  if (conn) conn.close();
  if (el) el.remove();
  view = conn = el = null;
});

function paste(files) {
  const event = new window.Event("paste", { bubbles: true, cancelable: true });
  const items = files.map((file) => ({ kind: "file", getAsFile: () => file }));
  Object.defineProperty(event, "clipboardData", { value: { items, files } });
  view.composer.dispatchEvent(event);
  return event;
}

test("a pasted image is uploaded (progress, cancel) and sent as an attachment", async () => {
  globalThis.XMLHttpRequest = FakeXHR;
  await open();
  const file = new File([new Uint8Array(300_000)], "big.png", { type: "image/png" });
  const event = paste([file]);
  assert.equal(event.defaultPrevented, true);
  const row = view.uploads.node.querySelector(".jce-upload");
  assert.equal(view.uploads.node.hidden, false);
  assert.equal(row.querySelector("progress").hidden, false);
  const xhr = FakeXHR.made.at(-1);
  xhr.upload.onprogress({ loaded: 150_000, total: 300_000, lengthComputable: true });
  assert.equal(row.querySelector("progress").value, 150_000);
  xhr.respond(201, { upload: "u-9", size: 300_000, mime: "image/png", name: "big.png" });
  await until(() => ws.framesOf("send").length === 1, "the send");
  const [frame] = ws.framesOf("send");
  assert.equal(frame.body, "");
  assert.deepEqual(frame.attachment, { upload: "u-9", kind: "image" }); // jsdom cannot measure an image
  assert.equal(view.uploads.node.hidden, true);

  // Cancel: nothing is sent
  paste([new File(["x"], "notes.txt", { type: "text/plain" })]);
  view.uploads.node.querySelector(".jce-upload-cancel").click();
  await until(() => view.uploads.node.hidden, "the bar to go");
  assert.equal(ws.framesOf("send").length, 1);
});

test("a file over the server's limit is refused before any upload; a refusal is said", async () => {
  globalThis.XMLHttpRequest = FakeXHR;
  await open({ max_attachment_size: 1000 });
  const before = FakeXHR.made.length;
  paste([new File([new Uint8Array(2000)], "huge.bin")]);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(FakeXHR.made.length, before);
  assert.match(view.errorLine.textContent, /huge\.bin is 2\.0 KiB; the chat server takes at most 1000 bytes/);
  paste([new File(["x"], "a.txt", { type: "text/plain" })]);
  FakeXHR.made.at(-1).respond(403, { code: "forbidden", message: "you are not a member of this private room" });
  await until(() => /You may not share files in this room/.test(view.errorLine.textContent), "the refusal");
  assert.equal(ws.framesOf("send").length, 0);
});

test("pasted text stays text: no upload", async () => {
  await open();
  const before = FakeXHR.made.length;
  const event = paste([]);
  assert.equal(event.defaultPrevented, false);
  assert.equal(FakeXHR.made.length, before);
});

test("a message with an attachment shows it under its caption; a broken one does not stop the others", async () => {
  await open();
  const url = serve(1, PNG, "image/png");
  const msg = (seq, attachment, body = "") => ({ op: "message", room: "general", seq, id: `m${seq}`, ts: 1000 + seq, user: ALICE, body, attachment });
  ws.receive(msg(1, { name: "p.png", mime: "image/png", kind: "image", url }, "loss curve $\\alpha$"));
  ws.receive(msg(2, { name: { evil: 1 }, mime: 5, url: "https://evil.example/x" }));
  ws.receive(msg(3, null, "still here"));
  const items = view.list.querySelectorAll("li.jce-msg");
  assert.equal(items.length, 3);
  assert.ok(items[0].querySelector(".jce-body .katex"));
  await until(() => items[0].querySelector(".jce-attachment img"), "the image");
  assert.ok(items[1].querySelector(".jce-attachment"));
  assert.match(items[2].textContent, /still here/);
  assert.ok(requests.every((r) => !r.url.includes("evil")));
});
