// A message's attachment, as the reader sees it (docs/protocol.md, "Attachments").
//
// Everything in `message.attachment` is untrusted: each field is checked (type, size)
// before use, and attachmentNode() never throws (one bad attachment shows as such; the
// rest of the list renders). The bytes are fetched lazily (when the attachment scrolls
// into view) from the chat server only (transfer.js), and shown without ever running
// what they hold:
// - PNG, JPEG, GIF, WebP: an <img> from a blob: URL; click to enlarge;
// - SVG: never inline DOM: the same <img> from a blob: URL (an SVG image runs no script);
// - HTML (in a MIME bundle): a sandboxed iframe (sandbox="", no scripts, an opaque
//   origin) whose srcdoc starts with a CSP that loads nothing;
// - values (tables, arrays): decoded by values.js (bounded), as a sortable table with a
//   CSV download, or dtype, shape, statistics and a heatmap or line;
// - anything else: a file to download.
// Names, captions and provenance are text nodes; provenance code is highlighted (code.js).
import { codeBlock, copyButton } from "./code.js";
import { h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { mathNode } from "./math.js";
import { sparkline } from "./sparkline.js";
import { attachmentBlob, attachmentObjectUrl, saveBlob, svgDataUrl } from "./transfer.js";
import { ALL_ROWS, ATTACHMENT_LIMITS, decodePacked } from "./values.js";

export const VALUE_MIME = "application/vnd.jupyter-chat-ext.value";
export const BUNDLE_MIME = "application/vnd.jupyter-chat-ext.bundle+json";
const KINDS = new Set(["figure", "image", "table", "array", "bundle", "file"]);
const IMAGE_MIMES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const SVG_MIME = "image/svg+xml";
const TABLE_ROWS_SHOWN = 50;
const BUNDLE_LIMIT = 16 * 1024 * 1024; // bytes of a MIME bundle's JSON that are parsed
const HTML_LIMIT = 2 * 1024 * 1024; // characters of HTML put in a sandboxed frame
// The first thing in a shared HTML document: it may load nothing at all (no scripts run
// anyway: the frame's sandbox has no allow-scripts), only show itself and inline images.
const FRAME_CSP = `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:">`;

/** `value` if it is a string, cut to `max` characters; else `fallback`. */
function text(value, max = 200, fallback = "") {
  return typeof value === "string" ? (value.length > max ? `${value.slice(0, max - 1)}…` : value) : fallback;
}

function count(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
}

/** A byte count for people, in the units the server's limits are given in: "47.1 KiB". */
export function humanSize(bytes) {
  if (bytes === null) return "";
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let n = bytes;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A name safe to save a file as: no path, no control characters. */
export function fileName(name) {
  const clean = text(name, 150, "").replace(/[\u0000-\u001f\u007f/\\:*?"<>|]+/g, "_").replace(/^\.+/, "");
  return clean || "attachment";
}

/** The checked fields of an attachment (see the module comment), or null if it is not one. */
export function describe(attachment) {
  if (attachment === null || typeof attachment !== "object" || Array.isArray(attachment)) return null;
  const kind = KINDS.has(attachment.kind) ? attachment.kind : "file";
  const mime = text(attachment.mime, 200, "application/octet-stream").toLowerCase();
  const preview = attachment.preview && typeof attachment.preview === "object" && !Array.isArray(attachment.preview) ? attachment.preview : {};
  const provenance = attachment.provenance && typeof attachment.provenance === "object" && !Array.isArray(attachment.provenance) ? attachment.provenance : null;
  return { kind, mime, name: text(attachment.name, 200, "attachment"), size: count(attachment.size), url: attachment.url, preview, provenance };
}

// ---- loading ---------------------------------------------------------------------

let observer = null;
const whenSeen = new WeakMap(); // node -> what to do when it scrolls into view

/** Run `load` once `node` is on screen (at once where that cannot be known). */
function lazily(node, load) {
  if (typeof IntersectionObserver === "undefined") {
    queueMicrotask(load);
    return;
  }
  if (!observer) {
    observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        observer.unobserve(entry.target);
        const run = whenSeen.get(entry.target);
        whenSeen.delete(entry.target);
        if (run) run();
      }
    }, { rootMargin: "200px" });
  }
  whenSeen.set(node, load);
  observer.observe(node);
}

/**
 * Replace what `view` shows by `node`; a message list that was scrolled to its end stays
 * there (also once an image in `node` has loaded), so a figure arriving below the last
 * message does not push the newest out of sight.
 */
function replaceKeepingEnd(view, node) {
  const scroller = view.closest(".jce-scroller, .jce-thread-scroller");
  const atEnd = (s) => s.scrollHeight - s.scrollTop - s.clientHeight < 40;
  const stick = scroller && atEnd(scroller);
  view.replaceChildren(node);
  if (!stick) return;
  scroller.scrollTop = scroller.scrollHeight;
  for (const image of view.querySelectorAll("img")) {
    image.addEventListener("load", () => (scroller.scrollTop = scroller.scrollHeight), { once: true });
  }
}

/** Fill `view` with what `show(blob)` makes of the fetched bytes; a failure says why, with a retry. */
function load(view, ctx, show) {
  const attempt = () => {
    view.replaceChildren(h("span", { class: "jce-att-loading", text: "loading…" }));
    view.classList.remove("jce-att-failed");
    attachmentBlob(ctx.http, ctx.url)
      .then((blob) => show(blob))
      .then((node) => replaceKeepingEnd(view, node))
      .catch((err) => {
        view.classList.add("jce-att-failed");
        const retry = h("button", { type: "button", class: "jce-att-retry", text: "Retry" });
        retry.addEventListener("click", attempt);
        view.replaceChildren(h("span", { text: `Could not be shown: ${(err && err.message) || err}. ` }), retry);
      });
  };
  lazily(view, attempt);
}

// ---- images ----------------------------------------------------------------------

/** Show `src` (a blob: URL) full size over the page until a click or Escape. */
export function enlarge(src, alt) {
  const image = h("img", { src, alt, class: "jce-overlay-image" });
  const close = h("button", { type: "button", class: "jce-overlay-close", text: "×", "aria-label": "Close" });
  const overlay = h("div", { class: "jce-overlay", role: "dialog", "aria-modal": "true", "aria-label": alt, tabindex: "-1" }, image, close);
  const done = () => overlay.remove();
  overlay.addEventListener("click", done);
  overlay.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Escape") done();
  });
  // On the page, not in the widget: a container query there would hold a fixed element.
  document.body.append(overlay);
  overlay.focus();
  return overlay;
}

function imageNode(src, alt, preview) {
  const image = h("img", { src, alt, class: "jce-att-image", title: "Click to enlarge" });
  const width = count(preview.width);
  const height = count(preview.height);
  if (width && height && width <= 100_000 && height <= 100_000) {
    image.setAttribute("width", String(width));
    image.setAttribute("height", String(height));
  }
  image.addEventListener("click", () => enlarge(src, alt));
  return image;
}

function imageView(view, ctx, type) {
  load(view, ctx, async () => imageNode(await attachmentObjectUrl(ctx.http, ctx.url, type), ctx.name, ctx.preview));
}

// ---- values: tables and arrays ---------------------------------------------------

function cellText(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  if (typeof value === "string") return value.length > 200 ? `${value.slice(0, 199)}…` : value;
  if (value === null || value === undefined) return "";
  const json = JSON.stringify(value) ?? String(value);
  return json.length > 200 ? `${json.slice(0, 199)}…` : json;
}

/** Order two cells: numbers by value, then text; empty (null, NaN) last. */
export function compareCells(a, b) {
  const emptyA = a === null || a === undefined || Number.isNaN(a);
  const emptyB = b === null || b === undefined || Number.isNaN(b);
  if (emptyA || emptyB) return emptyA === emptyB ? 0 : emptyA ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "number") return -1;
  if (typeof b === "number") return 1;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function csvCell(value) {
  let out = value === null || value === undefined || Number.isNaN(value) ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  // A text cell a spreadsheet would run as a formula is quoted as text.
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(out)) out = `'${out}`;
  return /[",\n\r]/.test(out) ? `"${out.replace(/"/g, '""')}"` : out;
}

/** A decoded table (see values.js) as CSV: the index first, then the columns. */
export function tableCsv(model) {
  const lines = [["", ...model.columns].map(csvCell).join(",")];
  for (let r = 0; r < model.index.length; r++) {
    lines.push([model.index[r], ...model.cells.map((column) => column[r])].map(csvCell).join(","));
  }
  return `${lines.join("\r\n")}\r\n`;
}

/** A table whose columns sort on a click on their header (over the rows materialised). */
export function sortableTable(model) {
  const order = model.index.map((_, i) => i);
  const columns = [model.index, ...model.cells];
  const names = ["", ...model.columns];
  let sortedBy = null;
  let descending = false;
  const body = h("tbody");
  const headers = names.map((name, c) => {
    const button = h("button", { type: "button", class: "jce-sort", text: cellText(name) || "index", title: "Sort by this column" });
    const th = h("th", { scope: "col", "aria-sort": "none" }, button);
    button.addEventListener("click", () => {
      descending = sortedBy === c ? !descending : false;
      sortedBy = c;
      const column = columns[c];
      order.sort((a, b) => compareCells(column[a], column[b]) * (descending ? -1 : 1) || a - b);
      headers.forEach((other, i) => other.setAttribute("aria-sort", i === c ? (descending ? "descending" : "ascending") : "none"));
      draw();
    });
    return th;
  });
  const draw = () => {
    const rows = order.slice(0, TABLE_ROWS_SHOWN).map((r) =>
      h("tr", {}, h("th", { scope: "row", text: cellText(model.index[r]) }), ...model.cells.map((column) => h("td", { text: cellText(column[r]) }))),
    );
    body.replaceChildren(...rows);
  };
  draw();
  const table = h("table", { class: "jce-table jce-att-table" }, h("thead", {}, h("tr", {}, ...headers)), body);
  const notes = [];
  const shown = Math.min(TABLE_ROWS_SHOWN, model.index.length);
  notes.push(`${shown} of ${model.length} rows`);
  if (model.index.length < model.length) notes.push(`sorting orders the first ${model.index.length}`);
  if (model.totalColumns > model.columns.length) notes.push(`${model.columns.length} of ${model.totalColumns} columns`);
  return h("div", {}, h("div", { class: "jce-att-scroll" }, table), h("div", { class: "jce-value-more", text: notes.join(", ") }));
}

/** A small heatmap of a sampled 2-D array (values.js `grid`) on a canvas. */
export function heatmap(grid) {
  const canvas = h("canvas", { class: "jce-heatmap", width: String(grid.columns), height: String(grid.rows), role: "img", "aria-label": "heatmap" });
  const finite = grid.cells.filter(Number.isFinite);
  const context = canvas.getContext ? (() => {
    try {
      return canvas.getContext("2d");
    } catch (err) {
      return null;
    }
  })() : null;
  if (!context || !finite.length) return canvas;
  let min = Infinity;
  let max = -Infinity;
  for (const v of finite) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min || 1;
  const image = context.createImageData(grid.columns, grid.rows);
  grid.cells.forEach((v, i) => {
    const t = Number.isFinite(v) ? (v - min) / span : null;
    // dark blue to yellow (NaN: transparent)
    const [r, g, b] = t === null ? [0, 0, 0] : [Math.round(68 + 185 * t), Math.round(1 + 230 * t), Math.round(84 + 50 * t - 100 * t * t)];
    image.data.set([r, g, b, t === null ? 0 : 255], i * 4);
  });
  context.putImageData(image, 0, 0);
  return canvas;
}

function valueNode(model) {
  if (model.kind === "table") return sortableTable(model);
  if (model.kind === "array") {
    const parts = [h("div", { class: "jce-att-summary", text: `${model.dtype}, shape (${model.shape.join(", ")}${model.shape.length === 1 ? "," : ""})` })];
    if (model.stats) {
      const { min, mean, max, over, count: n } = model.stats;
      const sample = over < n ? ` (over the first ${over} of ${n})` : "";
      parts.push(h("div", { class: "jce-value-stats", text: `min ${cellText(min)} · mean ${cellText(mean)} · max ${cellText(max)}${sample}` }));
    }
    if (model.grid) parts.push(heatmap(model.grid));
    if (model.line) {
      const points = model.line.map((v, i) => [i, v]).filter(([, v]) => Number.isFinite(v));
      const line = sparkline(points, 240, 48);
      if (line) parts.push(line);
    }
    return h("div", { class: "jce-att-array" }, ...parts);
  }
  if (model.kind === "invalid") return h("span", { class: "jce-att-invalid", text: `Not a value this widget can read: ${model.reason}` });
  return h("pre", { class: "jce-att-json", text: cellText(model.value) });
}

function valueView(view, ctx, tools) {
  load(view, ctx, async (blob) => {
    const bytes = await blob.arrayBuffer();
    const model = decodePacked(bytes);
    if (model.kind === "table") {
      const button = h("button", { type: "button", class: "jce-att-csv", text: "Download CSV" });
      button.addEventListener("click", () => {
        const all = decodePacked(bytes, ALL_ROWS);
        if (all.kind !== "table") return;
        saveBlob(new Blob([tableCsv(all)], { type: "text/csv" }), `${fileName(ctx.name).replace(/\.[^.]*$/, "")}.csv`);
      });
      tools.prepend(button);
    }
    return valueNode(model);
  });
}

// ---- MIME bundles ----------------------------------------------------------------

/** A sandboxed frame showing `html`: it runs no script and loads nothing. */
export function htmlFrame(html) {
  const frame = h("iframe", { class: "jce-att-frame", sandbox: "", referrerpolicy: "no-referrer", title: "shared HTML (scripts disabled)" });
  frame.srcdoc = FRAME_CSP + html.slice(0, HTML_LIMIT);
  return frame;
}

function base64Blob(data, type) {
  const binary = atob(String(data).replace(/\s+/g, ""));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Blob([bytes], { type });
}

function joined(data) {
  return Array.isArray(data) ? data.filter((part) => typeof part === "string").join("") : typeof data === "string" ? data : null;
}

/** The richest safe view of a MIME bundle `{mime: data}`. Object URLs made go in `urls`. */
export function bundleNode(bundle, name) {
  if (bundle === null || typeof bundle !== "object" || Array.isArray(bundle)) throw new Error("the bundle is not a JSON object");
  for (const type of ["image/png", "image/jpeg", "image/gif", "image/webp"]) {
    const data = joined(bundle[type]);
    if (data) return imageNode(URL.createObjectURL(base64Blob(data, type)), name, {});
  }
  const svg = joined(bundle[SVG_MIME]);
  if (svg) return imageNode(svgDataUrl(new TextEncoder().encode(svg)), name, {}); // never a blob: URL (transfer.js)
  const html = joined(bundle["text/html"]);
  if (html) return htmlFrame(html);
  const latex = joined(bundle["text/latex"]);
  if (latex) {
    const source = latex.trim().replace(/^\$\$?|\$\$?$/g, "");
    return mathNode(source.slice(0, 2000), true);
  }
  const markdown = joined(bundle["text/markdown"]);
  if (markdown) return h("div", { class: "jce-att-markdown" }, renderMarkdown(markdown.slice(0, 20_000)));
  const plain = joined(bundle["text/plain"]);
  if (plain) return h("pre", { class: "jce-att-json", text: plain.slice(0, 20_000) });
  throw new Error(`none of its types can be shown here (${Object.keys(bundle).slice(0, 5).join(", ")})`);
}

function bundleView(view, ctx) {
  load(view, ctx, async (blob) => {
    if (blob.size > BUNDLE_LIMIT) throw new Error(`it is ${humanSize(blob.size)}, too big to show here`);
    return bundleNode(JSON.parse(await blob.text()), ctx.name);
  });
}

// ---- provenance and the whole -----------------------------------------------------

/** Where a shared object came from, folded: notebook, execution count, code, versions. */
export function provenanceNode(provenance) {
  const rows = [];
  const notebook = text(provenance.notebook, 500);
  if (notebook) rows.push(h("div", {}, h("span", { class: "jce-att-label", text: "notebook " }), h("span", { text: notebook })));
  const execution = count(provenance.execution_count);
  if (execution !== null) rows.push(h("div", {}, h("span", { class: "jce-att-label", text: "cell " }), h("span", { text: `[${execution}]` })));
  const code = text(provenance.code, 20_000);
  if (code) rows.push(codeBlock(code, "python"));
  const versions = provenance.versions;
  if (versions && typeof versions === "object" && !Array.isArray(versions)) {
    const pairs = Object.entries(versions)
      .filter(([, v]) => typeof v === "string")
      .slice(0, 20)
      .map(([k, v]) => `${text(k, 60)} ${text(v, 60)}`);
    if (pairs.length) rows.push(h("div", {}, h("span", { class: "jce-att-label", text: "versions " }), h("span", { text: pairs.join(", ") })));
  }
  if (!rows.length) return null;
  return h("details", { class: "jce-att-provenance" }, h("summary", { text: "Where it came from" }), ...rows);
}

/**
 * The node of `attachment` (a message's, untrusted) of message `seq`, fetched with
 * `http` (a ChatHttp). Never throws: what cannot be shown says so.
 */
export function attachmentNode(attachment, seq, http) {
  try {
    return drawAttachment(attachment, seq, http);
  } catch (err) {
    console.error("jupyter-chat-ext: an attachment could not be shown", err);
    return h("div", { class: "jce-attachment jce-att-failed", text: "(an attachment that could not be shown)" });
  }
}

function drawAttachment(attachment, seq, http) {
  const info = describe(attachment);
  if (!info) return h("div", { class: "jce-attachment jce-att-failed", text: "(an attachment that could not be read)" });
  const url = http ? http.attachmentUrl(info.url) : null;
  const node = h("div", { class: "jce-attachment", "data-kind": info.kind });
  const view = h("div", { class: "jce-att-view" });
  const tools = h("span", { class: "jce-att-tools" });
  const label = [info.name, humanSize(info.size), info.mime].filter(Boolean).join(" · ");
  const meta = h("div", { class: "jce-att-meta" }, h("span", { class: "jce-att-name", text: label, title: label }), tools);
  node.append(view, meta);
  const ctx = { http, url, name: info.name, preview: info.preview };
  if (!url) {
    view.append(h("span", { class: "jce-att-invalid", text: "Its address is not this chat server's: it is not fetched." }));
  } else {
    const download = h("button", { type: "button", class: "jce-att-download", text: "Download" });
    download.addEventListener("click", () => {
      attachmentBlob(http, url).then(
        (blob) => saveBlob(blob, fileName(info.name)),
        (err) => (download.title = `Could not be downloaded: ${err.message}`),
      );
    });
    tools.append(download);
    const vector = info.kind === "figure" ? info.preview?.svg : null;
    if (typeof vector === "string" && vector.length <= 65536 && vector.includes("<svg")) {
      // A small figure's SVG, in its preview: shown sharp, with nothing to fetch.
      view.append(imageNode(svgDataUrl(new TextEncoder().encode(vector)), info.name, info.preview));
    } else if (IMAGE_MIMES.has(info.mime)) imageView(view, ctx, info.mime);
    else if (info.mime === SVG_MIME) imageView(view, ctx, SVG_MIME);
    else if (info.mime === VALUE_MIME) valueView(view, ctx, tools);
    else if (info.mime === BUNDLE_MIME) bundleView(view, ctx);
    else view.remove(); // a file: its name, size and download are all there is
  }
  if (Number.isSafeInteger(seq)) {
    tools.append(copyButton(() => `chat.take(${seq})`, "Copy code to load this", `Copy chat.take(${seq}): run it in your notebook to get this object`));
  }
  if (info.provenance) {
    const provenance = provenanceNode(info.provenance);
    if (provenance) node.append(provenance);
  }
  return node;
}
