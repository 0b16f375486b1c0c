// Sharing a file from the composer: paste an image or drop a file on it, and it is
// uploaded (transfer.js) with its progress shown and a cancel button, then sent in a
// message of its own (`send` with `attachment: {upload, kind, preview}`). Its size is
// checked against the server's limit before a byte is sent.
import { h } from "./dom.js";
import { humanSize } from "./attachments.js";
import { DEFAULT_ATTACHMENT_LIMIT, uploadFile } from "./transfer.js";

// Smaller uploads finish before a progress bar would mean anything.
const PROGRESS_FROM_BYTES = 256 * 1024;
const IMAGE_SIZE_TIMEOUT_MS = 5000;

/** The largest attachment the server takes: its `hello` limits say, else 10 MiB. */
export function uploadLimit(limits) {
  const limit = limits && limits.max_attachment_size;
  return Number.isSafeInteger(limit) && limit > 0 ? limit : DEFAULT_ATTACHMENT_LIMIT;
}

/** The attachment kind of a file: an image, or a file. */
export function attachmentKind(file) {
  return /^image\//i.test(file.type || "") ? "image" : "file";
}

/** The files a paste or a drop carries (none for text). */
export function filesOf(transfer) {
  if (!transfer) return [];
  const files = [];
  for (const item of transfer.items || []) {
    if (item.kind === "file") {
      const file = item.getAsFile();
      if (file) files.push(file);
    }
  }
  return files.length ? files : [...(transfer.files || [])];
}

/** An image's {width, height}, or null when the browser cannot tell (soon). Never rejects. */
export function imageSize(file) {
  try {
    return measure(file).catch(() => null);
  } catch (err) {
    return Promise.resolve(null);
  }
}

function measure(file) {
  if (typeof createImageBitmap === "function") {
    return createImageBitmap(file).then(
      (bitmap) => {
        const size = { width: bitmap.width, height: bitmap.height };
        if (bitmap.close) bitmap.close();
        return size;
      },
      () => null,
    );
  }
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    const done = (size) => {
      clearTimeout(timer);
      URL.revokeObjectURL(url);
      resolve(size);
    };
    const timer = setTimeout(() => done(null), IMAGE_SIZE_TIMEOUT_MS);
    image.onload = () => done({ width: image.naturalWidth, height: image.naturalHeight });
    image.onerror = () => done(null);
    image.src = url;
  });
}

/** What to tell the person when an upload is refused. */
export function refusalText(code, message, file, limit) {
  switch (code) {
    case "attachment_too_large":
      return `${file.name || "This file"} is ${humanSize(file.size)}; the chat server takes at most ${humanSize(limit)}. Share a smaller file.`;
    case "forbidden":
      return `You may not share files in this room (${message}).`;
    case "unauthenticated":
      return "You are not logged in to the chat server any more: reload the page.";
    case "rate_limited":
      return "Too many uploads at once: wait a moment, then share again.";
    case "unavailable":
      return `The file could not be shared: ${message}. Try again.`;
    default:
      return `${file.name || "The file"} could not be shared: ${message}.`;
  }
}

/**
 * The uploads of one window: `node` is their bar (a row per upload: name, progress,
 * cancel). `share(room, file, replyTo)` uploads and then sends; `say(text)` shows an error.
 */
export class Uploads {
  constructor(conn, http, say) {
    this.conn = conn;
    this.http = http;
    this.say = say;
    this.node = h("div", { class: "jce-uploads", "aria-live": "polite" });
    this.node.hidden = true;
    this.active = new Set(); // abort functions of uploads under way
  }

  /** Upload `file` to room `room` and send it there; resolves when sent, refused or cancelled. */
  async share(room, file, replyTo = null) {
    const limit = uploadLimit(this.conn.limits);
    if (file.size > limit) {
      this.say(refusalText("attachment_too_large", "", file, limit));
      return null;
    }
    const kind = attachmentKind(file);
    const progress = h("progress", { max: String(file.size || 1), value: "0" });
    progress.hidden = file.size < PROGRESS_FROM_BYTES;
    const cancel = h("button", { type: "button", class: "jce-upload-cancel", text: "Cancel", title: `Do not share ${file.name || "this file"}` });
    const row = h(
      "div",
      { class: "jce-upload" },
      h("span", { class: "jce-upload-name", text: `Sharing ${file.name || "a file"} (${humanSize(file.size)})…` }),
      progress,
      cancel,
    );
    this.node.append(row);
    this.node.hidden = false;
    const upload = uploadFile(this.http, room, file, { onProgress: (sent) => (progress.value = sent) });
    this.active.add(upload.abort);
    cancel.addEventListener("click", () => upload.abort());
    try {
      const [answer, size] = await Promise.all([upload.promise, kind === "image" ? imageSize(file) : null]);
      const attachment = { upload: answer.upload, kind };
      if (size && size.width > 0 && size.height > 0) attachment.preview = { width: size.width, height: size.height };
      return this.conn.send(room, "", replyTo, attachment);
    } catch (err) {
      if (err.code !== "aborted") this.say(refusalText(err.code, err.message, file, limit));
      return null;
    } finally {
      this.active.delete(upload.abort);
      row.remove();
      this.node.hidden = this.node.childElementCount === 0;
    }
  }

  /** Cancel every upload under way. */
  destroy() {
    for (const abort of this.active) abort();
    this.active.clear();
  }
}
