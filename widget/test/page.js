// What the window's tests share: a jsdom page installed as the global one (before the
// view is imported), and a WebSocket the test plays as the server. Not a test itself.
import { JSDOM } from "jsdom";

/** Make a jsdom page of `html` (at `url`) the global window; what jsdom lacks (layout) is a stub. */
export function installPage(html = "<!doctype html><html><body></body></html>", url = undefined) {
  const { window } = new JSDOM(html, { pretendToBeVisual: true, url });
  globalThis.window = window;
  globalThis.document = window.document;
  globalThis.getComputedStyle = window.getComputedStyle.bind(window);
  globalThis.requestAnimationFrame = window.requestAnimationFrame.bind(window);
  globalThis.cancelAnimationFrame = window.cancelAnimationFrame.bind(window);
  globalThis.MutationObserver = window.MutationObserver;
  globalThis.ResizeObserver = class {
    observe() {}
    disconnect() {}
  };
  return window;
}

/** A WebSocket whose server is the test: `receive(frame)` delivers, `sent` records. */
export class FakeSocket {
  static OPEN = 1;
  static opened = [];

  constructor(url) {
    this.url = url;
    this.readyState = FakeSocket.OPEN;
    this.sent = [];
    FakeSocket.opened.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close() {}

  receive(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }

  framesOf(op) {
    return this.sent.filter((frame) => frame.op === op);
  }
}
