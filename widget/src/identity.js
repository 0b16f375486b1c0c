// Renaming yourself: jupyter_server's identity API (PATCH {base}api/me), then every
// chat window of yours (this page, your other tabs) and your kernel pick the name up.

const CHANNEL = "jupyter-chat-ext-identity";
export const MAX_DISPLAY_NAME = 100;

/** Check a display name; returns it trimmed, or throws an Error that says what to fix. */
export function checkDisplayName(name) {
  const trimmed = String(name ?? "").trim();
  if (!trimmed) throw new Error("Type a name first.");
  if (trimmed.length > MAX_DISPLAY_NAME) throw new Error(`A name has at most ${MAX_DISPLAY_NAME} characters.`);
  if (/[\u0000-\u001f\u007f]/.test(trimmed)) throw new Error("A name cannot contain control characters.");
  return trimmed;
}

/** Initials for a display name: the first letters of its first two words. */
export function initialsFor(name) {
  const parts = name.split(/\s+/).filter(Boolean);
  return parts.map((p) => [...p][0]).join("").slice(0, 2).toUpperCase() || "?";
}

/**
 * Ask this page's server to call you `name` from now on (it keeps it in your login
 * cookie). `fetchImpl` is injectable for tests. Throws an Error saying what to do.
 */
export async function setDisplayName(name, { baseUrl = "/", token = "", xsrf = "", fetchImpl = fetch } = {}) {
  const displayName = checkDisplayName(name);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `token ${token}`;
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  const url = `${baseUrl.replace(/\/?$/, "/")}api/me`;
  let response;
  try {
    response = await fetchImpl(url, {
      method: "PATCH",
      headers,
      credentials: "same-origin",
      body: JSON.stringify({ display_name: displayName, initials: initialsFor(displayName) }),
    });
  } catch (err) {
    throw new Error("Could not reach the server to change your name; try again when it is back.");
  }
  if (response.status === 400 || response.status === 501) {
    throw new Error(
      "This server does not let you change your name (its admin can allow it with " +
        'c.IdentityProvider.updatable_fields = ["display_name", "initials"]).',
    );
  }
  if (!response.ok) throw new Error(`The server refused the new name (HTTP ${response.status}).`);
  return displayName;
}

/**
 * Tell every chat window of yours (this one, others on this page, other tabs) that
 * your identity changed. Returns false where the browser cannot (no BroadcastChannel).
 */
export function announceIdentityChange() {
  if (typeof BroadcastChannel === "undefined") return false;
  const channel = new BroadcastChannel(CHANNEL);
  channel.postMessage({ kind: "identity" });
  channel.close();
  return true;
}

/** Call `callback` when another window of yours announces a change; returns a cleanup. */
export function onIdentityChange(callback) {
  if (typeof BroadcastChannel === "undefined") return () => {};
  const channel = new BroadcastChannel(CHANNEL);
  channel.onmessage = (event) => {
    if (event.data && event.data.kind === "identity") callback();
  };
  return () => channel.close();
}
