// Live values sent as binary frames: [4-byte big-endian header length][JSON header][buffers].
// The header's value is a JSON tree whose {"$ndarray": ...}, {"$series": ...} and
// {"$dataframe": ...} nodes refer to the raw buffers (see docs/protocol.md). Here they
// become small display models: we show summaries and the first rows, never everything.

const TABLE_ROWS = 20;
const DTYPE_NAMES = {
  f8: "float64", f4: "float32", f2: "float16", i1: "int8", i2: "int16", i4: "int32", i8: "int64",
  u1: "uint8", u2: "uint16", u4: "uint32", u8: "uint64", b1: "bool", c8: "complex64", c16: "complex128",
};

const TYPED = {
  f8: Float64Array, f4: Float32Array,
  i1: Int8Array, i2: Int16Array, i4: Int32Array, i8: BigInt64Array,
  u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, u8: BigUint64Array,
  b1: Uint8Array,
};

/** Split a binary frame into its header object and its list of buffers. */
export function unpackBinary(data) {
  const view = new DataView(data);
  const size = view.getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, size)));
  const buffers = [];
  let offset = 4 + size;
  for (const length of header.buffers || []) {
    buffers.push(data.slice(offset, offset + length));
    offset += length;
  }
  return { header, buffers };
}

/** A typed array for a numeric dtype in this machine's (little-endian) order, or null. */
function typedArray(dtype, buffer) {
  const order = dtype[0];
  const code = dtype.slice(1);
  const Type = TYPED[code];
  if (!Type || order === ">" || buffer.byteLength % Type.BYTES_PER_ELEMENT) return null;
  return new Type(buffer);
}

function numbers(array) {
  return Array.from(array, (v) => Number(v));
}

function decodeArray(spec, buffers) {
  if (Array.isArray(spec)) return { kind: "list", values: spec };
  if (spec.$values) return { kind: "list", dtype: spec.$values.dtype, values: spec.$values.values };
  const info = spec.$ndarray;
  const typed = typedArray(info.dtype, buffers[info.buffer]);
  const code = info.dtype.replace(/^[<>|=]/, "");
  const model = { kind: "array", dtype: DTYPE_NAMES[code] || code, shape: info.shape, values: null };
  if (typed) {
    const values = numbers(typed);
    model.values = values;
    if (values.length) {
      let min = Infinity;
      let max = -Infinity;
      let sum = 0;
      for (const v of values) {
        if (v < min) min = v;
        if (v > max) max = v;
        sum += v;
      }
      model.stats = { min, max, mean: sum / values.length };
    }
  }
  return model;
}

function indexLabels(spec, length) {
  if (spec.$range) {
    const [start, , step] = spec.$range;
    return Array.from({ length }, (_, i) => start + i * step);
  }
  const values = spec.$index.values;
  return Array.isArray(values) ? values : values.$values ? values.$values.values : null;
}

function column(model, rows) {
  if (model.kind === "list") return model.values.slice(0, rows);
  return model.values ? model.values.slice(0, rows) : Array(rows).fill("…");
}

/** Turn a value tree (with buffers) into what the panel shows. */
export function decodeValue(tree, buffers) {
  if (tree && typeof tree === "object" && !Array.isArray(tree)) {
    if (tree.$ndarray) return decodeArray(tree, buffers);
    if (tree.$dataframe) {
      const spec = tree.$dataframe;
      const data = spec.data.map((d) => decodeArray(d, buffers));
      const length = data.length ? (data[0].kind === "list" ? data[0].values.length : data[0].shape[0]) : 0;
      const rows = Math.min(length, TABLE_ROWS);
      return {
        kind: "table",
        columns: spec.columns.map(String),
        index: (indexLabels(spec.index, length) || []).slice(0, rows),
        cells: data.map((d) => column(d, rows)),
        length,
      };
    }
    if (tree.$series) {
      const spec = tree.$series;
      const data = decodeArray(spec.values, buffers);
      const length = data.kind === "list" ? data.values.length : data.shape[0];
      const rows = Math.min(length, TABLE_ROWS);
      return {
        kind: "table",
        columns: [spec.name === null ? "value" : String(spec.name)],
        index: (indexLabels(spec.index, length) || []).slice(0, rows),
        cells: [column(data, rows)],
        length,
      };
    }
  }
  return tree;
}
