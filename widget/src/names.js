// How people are named in the window: display names, told apart where they collide.

/** A user's display name (falling back to name, then username). */
export function nameOf(user) {
  return String(user.display_name || user.name || user.username || "?");
}

/**
 * Labels for `users` (each `{username, display_name, kernel}`), keyed by username:
 * the display name, with the username added where two different users share one,
 * so that nobody can pass for someone else by taking their name.
 */
export function labelsFor(users) {
  const byName = new Map();
  for (const user of users) {
    const name = nameOf(user).trim().toLowerCase();
    if (!byName.has(name)) byName.set(name, new Set());
    byName.get(name).add(user.username);
  }
  const labels = new Map();
  for (const user of users) {
    const shared = byName.get(nameOf(user).trim().toLowerCase()).size > 1;
    const differs = nameOf(user) !== user.username;
    labels.set(user.username, shared && differs ? `${nameOf(user)} (${user.username})` : nameOf(user));
  }
  return labels;
}

/** What a member entry says: their label, marked when only their kernel is here. */
export function memberText(label, user, own) {
  if (user.kernel) return `${label}'s kernel${own ? " (yours)" : ""}`;
  return label + (own ? " (you)" : "");
}
