// What the page does to get your attention when someone mentions you: the count in the
// document title (while you have unread mentions; the title is restored when none) and
// a browser notification while the page is hidden. Both belong to the page, not to one
// window: every chat window on it reports its count here (the same person's: the
// highest counts), and a mention notified by several is shown once.
import { titleText } from "./readstate.js";

const counts = new Map(); // reporting window -> its unread mentions
let observer = null;
const notified = new Set(); // tags notified already (bounded)
const NOTIFIED_MAX = 500;

function applyTitle() {
  const total = Math.max(0, ...counts.values());
  const next = titleText(document.title, total);
  if (next !== document.title) document.title = next;
}

/** Window `source` has `count` unread mentions (0: none, or it is gone). */
export function reportMentions(source, count) {
  if (count > 0) counts.set(source, count);
  else counts.delete(source);
  applyTitle();
  // The host (JupyterLab, Notebook 7) sets the title as documents change: put the
  // count back in front of whatever it writes, as long as there is one.
  if (counts.size > 0 && !observer && typeof MutationObserver !== "undefined" && document.head) {
    observer = new MutationObserver(applyTitle);
    observer.observe(document.head, { childList: true, subtree: true, characterData: true });
  } else if (counts.size === 0 && observer) {
    observer.disconnect();
    observer = null;
  }
}

/** Whether this browser can notify, and what it was told: "granted", "denied", "default" or "unsupported". */
export function notificationPermission() {
  return typeof Notification === "function" ? Notification.permission : "unsupported";
}

/** Ask for permission to notify (call it from a click only); resolves to the answer. */
export async function askToNotify() {
  if (typeof Notification !== "function") return "unsupported";
  try {
    return await Notification.requestPermission();
  } catch (err) {
    return Notification.permission;
  }
}

/**
 * Show `notice` ({title, body, tag}) as a browser notification if the page is hidden and
 * notifying is allowed, once per tag; `onClick` runs when it is clicked (after the page
 * is focused). Returns whether it was shown.
 */
export function notify(notice, onClick) {
  if (!document.hidden || notificationPermission() !== "granted" || notified.has(notice.tag)) return false;
  notified.add(notice.tag);
  if (notified.size > NOTIFIED_MAX) notified.delete(notified.values().next().value);
  try {
    const shown = new Notification(notice.title, { body: notice.body, tag: notice.tag });
    shown.onclick = () => {
      window.focus();
      shown.close();
      onClick();
    };
    return true;
  } catch (err) {
    // Some browsers allow notifications from service workers only.
    return false;
  }
}
