// Live values as the panel shows them. A value is a JSON tree in which {"$ndarray": ...},
// {"$series": ...} and {"$dataframe": ...} nodes refer to raw buffers that came in the
// same binary frame (see docs/protocol.md and jupyter_chat_ext/values.py).
//
// Every value comes from someone else and is untrusted: decodeValue() never throws, and
// a value that does not decode becomes {kind: "invalid", reason, raw}. Whatever a header
// claims (a shape, a dtype, a length) is checked against the bytes or the data that
// actually came, and only a bounded part is ever materialised: the first rows of a
// table, the first elements of an array, and statistics over a bounded sample.

/** Bounds on what a value may claim and on what is materialised for display. */
export const VALUE_LIMITS = Object.freeze({
  rows: 20, // table rows shown
  columns: 20, // table columns shown
  sample: 100_000, // array elements that min, mean and max are computed over
  depth: 64, // nesting of a JSON value (objects and lists)
  dims: 32, // an array's dimensions (numpy allows 64)
  preview: 120, // characters of an invalid value shown raw
});

/**
 * What an attachment (a value shared in a message, fetched whole) materialises: more
 * rows, to sort and page through, and samples of an array for a chart. Still bounded:
 * a table of a million rows shows its first thousand.
 */
export const ATTACHMENT_LIMITS = Object.freeze({
  rows: 1000,
  columns: 50,
  line: 500, // elements of a 1-D array drawn as a line
  grid: 64, // cells per side of a 2-D array's heatmap (sampled)
});

/** Everything, for a download (CSV) of a table the reader asked for. */
export const ALL_ROWS = Object.freeze({ rows: Infinity, columns: Infinity });

const MARKERS = new Set(["$ndarray", "$series", "$dataframe"]);
const DTYPE = /^([<>|=]?)([biufcmMSUV])(\d{1,5})(\[[A-Za-z0-9]{1,8}\])?$/;
const DTYPE_NAMES = {
  f8: "float64", f4: "float32", f2: "float16", i1: "int8", i2: "int16", i4: "int32", i8: "int64",
  u1: "uint8", u2: "uint16", u4: "uint32", u8: "uint64", b1: "bool", c8: "complex64", c16: "complex128",
};
// How to read one element of a numeric dtype: DataView getter, and whether it is a BigInt.
const READERS = {
  f8: ["getFloat64"], f4: ["getFloat32"],
  i1: ["getInt8"], i2: ["getInt16"], i4: ["getInt32"], i8: ["getBigInt64", true],
  u1: ["getUint8"], u2: ["getUint16"], u4: ["getUint32"], u8: ["getBigUint64", true],
  b1: ["getUint8"],
  M8: ["getBigInt64", true], m8: ["getBigInt64", true],
};
// Nanoseconds per unit of a datetime64/timedelta64 (the units pandas and numpy write).
const TIME_UNITS = { D: 86_400e9, h: 3_600e9, m: 60e9, s: 1e9, ms: 1e6, us: 1e3, ns: 1 };
const NAT = -(2n ** 63n);

/** Why a value was refused: its message is shown to the reader. */
class InvalidValue extends Error {}

function check(condition, reason) {
  if (!condition) throw new InvalidValue(reason);
}

function isObject(node) {
  return node !== null && typeof node === "object" && !Array.isArray(node);
}

function isCount(n) {
  return Number.isSafeInteger(n) && n >= 0;
}

/** A short, bounded text of any JSON (never walks past `limit` characters or 8 levels). */
export function preview(node, limit = VALUE_LIMITS.preview) {
  let out = "";
  const visit = (value, depth) => {
    if (out.length > limit) return;
    if (value === null || typeof value !== "object") {
      out += typeof value === "string" ? JSON.stringify(value.slice(0, limit)) : String(value);
    } else if (depth >= 8) {
      out += Array.isArray(value) ? "[…]" : "{…}";
    } else if (Array.isArray(value)) {
      out += "[";
      for (let i = 0; i < value.length && out.length <= limit; i++) {
        if (i) out += ", ";
        visit(value[i], depth + 1);
      }
      out += "]";
    } else {
      out += "{";
      let first = true;
      for (const key in value) {
        if (out.length > limit) break;
        if (!first) out += ", ";
        first = false;
        out += `${JSON.stringify(key.slice(0, limit))}: `;
        visit(value[key], depth + 1);
      }
      out += "}";
    }
  };
  visit(node, 0);
  return out.length > limit ? `${out.slice(0, limit - 1)}…` : out;
}

/** Refuse JSON nested deeper than the limit (walked without recursion). */
function checkDepth(tree, what = "it") {
  const stack = [[tree, 1]];
  while (stack.length) {
    const [node, depth] = stack.pop();
    if (node === null || typeof node !== "object") continue;
    check(depth <= VALUE_LIMITS.depth, `${what} is nested more than ${VALUE_LIMITS.depth} levels deep`);
    for (const key in node) stack.push([node[key], depth + 1]);
  }
}

function invalid(tree, reason) {
  let raw = "";
  try {
    raw = preview(tree);
  } catch (err) {
    raw = "";
  }
  return { kind: "invalid", reason, raw };
}

/** Split a binary frame into its header object and its list of buffers (ArrayBuffers). */
export function unpackBinary(data, sizesKey = "buffers", what = "the binary frame") {
  check(data instanceof ArrayBuffer && data.byteLength >= 4, `${what} is shorter than its 4-byte header length`);
  const size = new DataView(data).getUint32(0, false);
  check(4 + size <= data.byteLength, `${what}'s header length is past its end`);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, size)));
  check(isObject(header), `${what}'s header is not a JSON object`);
  const sizes = Array.isArray(header[sizesKey]) ? header[sizesKey] : [];
  const buffers = [];
  let offset = 4 + size;
  for (const length of sizes) {
    // A size that is not a count, or runs past the end, ends the list: the value that
    // refers to the missing buffers is then refused as such.
    if (!isCount(length) || offset + length > data.byteLength) break;
    buffers.push(data.slice(offset, offset + length));
    offset += length;
  }
  return { header, buffers };
}

/**
 * Decode a value attachment's bytes (jupyter_chat_ext.values.pack: the header is
 * `{"sizes": [...], "value": tree}`) with the bounds `shown` (ATTACHMENT_LIMITS, or
 * ALL_ROWS for a download). Never throws: bytes that do not decode give an invalid value.
 */
export function decodePacked(data, shown = ATTACHMENT_LIMITS) {
  let unpacked;
  try {
    unpacked = unpackBinary(data, "sizes", "the attachment");
  } catch (err) {
    return invalid(null, err instanceof InvalidValue ? err.message : `it could not be read (${err && err.message})`);
  }
  return decodeValue(unpacked.header.value, unpacked.buffers, shown);
}

/** The checked layout of one {"$ndarray": ...} node: its dtype, shape, element count and bytes. */
function arrayLayout(spec, buffers) {
  const info = spec.$ndarray;
  check(isObject(info), "its $ndarray is not an object");
  const { dtype, shape, buffer } = info;
  const match = typeof dtype === "string" ? DTYPE.exec(dtype) : null;
  check(match, `its dtype ${preview(dtype, 30)} is not one this widget knows`);
  const [, order, kind, digits, unit] = match;
  const itemsize = Number(digits) * (kind === "U" ? 4 : 1);
  check(itemsize > 0, `its dtype ${dtype} has no size`);
  check(
    Array.isArray(shape) && shape.length <= VALUE_LIMITS.dims && shape.every(isCount),
    `its shape ${preview(shape, 40)} is not a list of at most ${VALUE_LIMITS.dims} whole numbers ≥ 0`,
  );
  check(
    Number.isInteger(buffer) && buffer >= 0 && buffer < buffers.length,
    `it refers to buffer ${preview(buffer, 20)}, but ${buffers.length} came with it`,
  );
  const bytes = buffers[buffer];
  check(bytes instanceof ArrayBuffer, "its buffer is not binary data");
  const count = shape.reduce((product, n) => product * n, 1);
  check(
    count * itemsize === bytes.byteLength,
    `its shape [${shape.join("×")}] of ${dtype} needs ${count * itemsize} bytes, but ${bytes.byteLength} came`,
  );
  const code = `${kind}${digits}`;
  const scale = kind === "M" || kind === "m" ? TIME_UNITS[(unit || "").slice(1, -1)] : undefined;
  return { order, code, kind, scale, count, itemsize, bytes, dtype: DTYPE_NAMES[code] || dtype.replace(/^[<>|=]/, ""), shape };
}

/** An element of a datetime64 (an ISO date) or timedelta64 (seconds) array as text. */
function timeText(big, layout) {
  if (big === NAT) return "NaT";
  const ms = (Number(big) * layout.scale) / 1e6;
  if (layout.kind === "m") return `${ms / 1000} s`;
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(big) : date.toISOString().replace("T00:00:00.000Z", "").replace(".000Z", "Z");
}

/**
 * How to read element i of an array: a number (datetimes: their text; see timeText), or
 * null if its dtype is not one shown.
 */
function reader(layout) {
  const entry = READERS[layout.code];
  if (!entry) return null;
  const [method, big] = entry;
  const view = new DataView(layout.bytes);
  const little = layout.order !== ">";
  const size = layout.itemsize;
  if (layout.kind === "M" || layout.kind === "m") {
    return layout.scale ? (i) => timeText(view[method](i * size, little), layout) : null;
  }
  return big ? (i) => Number(view[method](i * size, little)) : (i) => view[method](i * size, little);
}

function head(read, count, n) {
  if (!read) return null;
  const values = [];
  for (let i = 0; i < Math.min(count, n); i++) values.push(read(i));
  return values;
}

/** min, mean and max over at most VALUE_LIMITS.sample elements (NaNs skipped), or null. */
function stats(read, count) {
  if (!read || !count) return null;
  const over = Math.min(count, VALUE_LIMITS.sample);
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let seen = 0;
  for (let i = 0; i < over; i++) {
    const v = read(i);
    if (Number.isNaN(v)) continue;
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
    seen += 1;
  }
  return seen ? { min, max, mean: sum / seen, over, count } : null;
}

/** A 2-D array sampled on a grid of at most `side` × `side` cells (row-major), for a heatmap. */
function grid(read, [rows, columns], side) {
  const gr = Math.min(rows, side);
  const gc = Math.min(columns, side);
  const cells = [];
  for (let i = 0; i < gr; i++) {
    const r = Math.floor((i * rows) / gr);
    for (let j = 0; j < gc; j++) cells.push(read(r * columns + Math.floor((j * columns) / gc)));
  }
  return { rows: gr, columns: gc, cells };
}

function decodeArray(spec, buffers, shown) {
  const layout = arrayLayout(spec, buffers);
  const numeric = layout.kind !== "M" && layout.kind !== "m";
  const read = numeric ? reader(layout) : null;
  const model = {
    kind: "array",
    dtype: layout.dtype,
    shape: layout.shape.slice(),
    count: layout.count,
    stats: stats(read, layout.count),
  };
  // An attachment also gets what its chart is drawn from (a live value never does).
  if (read && shown.line && layout.shape.length === 1) model.line = head(read, layout.count, shown.line);
  if (read && shown.grid && layout.shape.length === 2 && layout.count > 0) model.grid = grid(read, layout.shape, shown.grid);
  return model;
}

/** A table column (or index values): its length and its first rows (null: not shown). */
function decodeColumn(spec, buffers, what, shown) {
  if (Array.isArray(spec)) {
    checkDepth(spec, what);
    return { length: spec.length, head: spec.slice(0, shown.rows) };
  }
  check(isObject(spec), `${what} is neither a list nor an array`);
  if ("$values" in spec) {
    const inner = spec.$values;
    check(isObject(inner) && Array.isArray(inner.values), `${what} has no list of values`);
    checkDepth(inner.values, what);
    return { length: inner.values.length, head: inner.values.slice(0, shown.rows) };
  }
  check("$ndarray" in spec, `${what} is neither a list nor an array`);
  const layout = arrayLayout(spec, buffers);
  check(layout.shape.length === 1, `${what} has ${layout.shape.length} dimensions, not 1`);
  return { length: layout.count, head: head(reader(layout), layout.count, shown.rows) };
}

/** A table's index: its length and its first labels. */
function decodeIndex(spec, buffers, shown) {
  check(isObject(spec), "its index is not an object");
  if ("$range" in spec) {
    const range = spec.$range;
    check(
      Array.isArray(range) && range.length === 3 && range.every(Number.isSafeInteger) && range[2] !== 0,
      "its $range is not [start, stop, step] in whole numbers with a step other than 0",
    );
    const [start, stop, step] = range;
    const length = Math.max(0, Math.ceil((stop - start) / step));
    const labels = [];
    for (let i = 0; i < Math.min(length, shown.rows); i++) labels.push(start + i * step);
    return { length, head: labels };
  }
  check(isObject(spec.$index), "its index is neither a $range nor an $index");
  return decodeColumn(spec.$index.values, buffers, "its index", shown);
}

function decodeTable(columns, data, indexSpec, buffers, limits) {
  const index = decodeIndex(indexSpec, buffers, limits);
  const length = index.length;
  const shown = data.slice(0, limits.columns).map((spec, i) => decodeColumn(spec, buffers, `column ${i}`, limits));
  // Every column must be as long as the index, shown or not (the others are only measured).
  data.forEach((spec, i) => {
    const column = i < shown.length ? shown[i] : decodeColumn(spec, buffers, `column ${i}`, { rows: 0 });
    check(column.length === length, `column ${i} has ${column.length} rows, but its index has ${length}`);
  });
  const rows = Math.min(length, limits.rows);
  return {
    kind: "table",
    columns: columns.slice(0, limits.columns).map((c) => (typeof c === "string" ? c : preview(c, 40))),
    totalColumns: columns.length,
    index: index.head ? index.head.slice(0, rows) : Array(rows).fill("…"),
    cells: shown.map((column) => (column.head ? column.head.slice(0, rows) : Array(rows).fill("…"))),
    length,
  };
}

function decodeMarker(key, spec, buffers, shown) {
  if (key === "$ndarray") return decodeArray({ $ndarray: spec }, buffers, shown);
  check(isObject(spec), `its ${key} is not an object`);
  if (key === "$series") {
    checkDepth([spec.name], "its name");
    const name = spec.name === null || spec.name === undefined ? "value" : spec.name;
    return decodeTable([name], [spec.values], spec.index, buffers, shown);
  }
  const { columns, data } = spec;
  check(Array.isArray(columns) && Array.isArray(data), "its columns or data are not lists");
  check(columns.length === data.length, `it names ${columns.length} columns but has ${data.length}`);
  checkDepth(columns, "its column names");
  return decodeTable(columns, data, spec.index, buffers, shown);
}

/**
 * Turn a received value (JSON tree and buffers) into what the panel shows:
 * {kind: "json", value}, {kind: "array", ...}, {kind: "table", ...} or
 * {kind: "invalid", reason, raw}. `shown` bounds what is materialised (rows and columns
 * of a table; an attachment's also asks for its chart's samples). Never throws.
 */
export function decodeValue(tree, buffers = [], shown = VALUE_LIMITS) {
  try {
    if (isObject(tree)) {
      const keys = Object.keys(tree);
      if (keys.length === 1 && MARKERS.has(keys[0])) return decodeMarker(keys[0], tree[keys[0]], buffers, shown);
    }
    checkDepth(tree);
    return { kind: "json", value: tree };
  } catch (err) {
    return invalid(tree, err instanceof InvalidValue ? err.message : `it could not be read (${err && err.message})`);
  }
}
