// How deep and how costly a Markdown text is, measured before it is parsed.
// The Markdown parser recurses once per nesting level (a thousand `>` overflow its stack)
// and is slow on long runs of emphasis delimiters; a message past these bounds is shown
// as plain text instead. Pure functions: no DOM, so they are tested in Node.

/** Past any of these a message is shown as plain text rather than parsed as Markdown. */
export const MARKDOWN_LIMITS = Object.freeze({
  depth: 20, // nested blockquotes and lists on one line, counting indentation
  brackets: 20, // nested [ ] (links and images inside each other)
  delimiters: 500, // emphasis delimiters (* _ ~) in the whole message: parsing them is quadratic
  chars: 20_000, // the whole message
});

function isSpace(ch) {
  return ch === " " || ch === "\t";
}

/**
 * The container depth of one line: each `>` and list marker in its prefix is a level,
 * and so is every 2 columns of indentation before them (a nested list item needs at
 * least that much), so this is never less than the depth the parser would reach.
 */
export function lineDepth(line) {
  let depth = 0;
  let column = 0;
  let i = 0;
  for (;;) {
    while (i < line.length && isSpace(line[i])) {
      column += line[i] === "\t" ? 4 - (column % 4) : 1;
      i += 1;
    }
    const ch = line[i];
    let next = i + 1;
    if (ch === ">") {
      depth += 1;
      i = next;
      continue;
    }
    if (ch === "-" || ch === "*" || ch === "+") {
      // a bullet, if followed by a space or the end of the line
    } else if (ch >= "0" && ch <= "9") {
      while (next < line.length && next - i < 10 && line[next] >= "0" && line[next] <= "9") next += 1;
      if (line[next] !== "." && line[next] !== ")") break;
      next += 1;
    } else {
      break;
    }
    if (next < line.length && !isSpace(line[next])) break;
    depth += 1;
    i = next;
  }
  return depth + (depth ? Math.floor(column / 2) : 0);
}

/** Measure a Markdown text: deepest line, deepest brackets, emphasis delimiters. */
export function markdownNesting(text) {
  let depth = 0;
  let brackets = 0;
  let open = 0;
  let delimiters = 0;
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    const ch = text[i];
    if (i === text.length || ch === "\n" || ch === "\r") {
      depth = Math.max(depth, lineDepth(text.slice(start, i)));
      start = i + 1;
    } else if (ch === "[") {
      open += 1;
      if (open > brackets) brackets = open;
    } else if (ch === "]") {
      if (open > 0) open -= 1;
    } else if (ch === "*" || ch === "_" || ch === "~") {
      delimiters += 1;
    }
  }
  return { depth, brackets, delimiters };
}

/** Why `text` must be shown as plain text (a sentence), or null if it may be parsed. */
export function plainTextReason(text) {
  const limits = MARKDOWN_LIMITS;
  if (text.length > limits.chars) return `longer than ${limits.chars} characters`;
  const { depth, brackets, delimiters } = markdownNesting(text);
  if (depth > limits.depth) return `nested ${depth} levels deep (more than ${limits.depth})`;
  if (brackets > limits.brackets) return `brackets nested ${brackets} deep (more than ${limits.brackets})`;
  if (delimiters > limits.delimiters) return `more than ${limits.delimiters} emphasis marks`;
  return null;
}
