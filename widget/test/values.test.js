import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeValue, unpackBinary, VALUE_LIMITS } from "../src/values.js";

const f8 = (...values) => new Float64Array(values).buffer;
const array = (dtype, shape, buffer = 0) => ({ $ndarray: { dtype, shape, buffer } });

/** A binary frame as the server relays it: [u32 header length][JSON header][buffers]. */
function frame(header, buffers) {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const size = 4 + json.length + buffers.reduce((n, b) => n + b.byteLength, 0);
  const bytes = new Uint8Array(size);
  new DataView(bytes.buffer).setUint32(0, json.length, false);
  bytes.set(json, 4);
  let offset = 4 + json.length;
  for (const buffer of buffers) {
    bytes.set(new Uint8Array(buffer), offset);
    offset += buffer.byteLength;
  }
  return bytes.buffer;
}

/** Decode `tree`, and check that it is refused quickly and says why (matching `reason`). */
function refused(tree, buffers, reason) {
  const before = process.memoryUsage().arrayBuffers;
  const start = performance.now();
  const model = decodeValue(tree, buffers);
  const elapsed = performance.now() - start;
  assert.equal(model.kind, "invalid", JSON.stringify(model).slice(0, 200));
  assert.match(model.reason, reason);
  assert.ok(model.raw.length <= VALUE_LIMITS.preview);
  // Nothing near the size it claims was allocated, nor spent walking it.
  assert.ok(process.memoryUsage().arrayBuffers - before < 10_000_000);
  assert.ok(elapsed < 1000, `${elapsed} ms`);
  return model;
}

test("arrays and tables decode to what the panel shows", () => {
  const matrix = decodeValue(array("<f8", [2, 2]), [f8(1, 2, 3, 6)]);
  assert.deepEqual(matrix, {
    kind: "array",
    dtype: "float64",
    shape: [2, 2],
    count: 4,
    stats: { min: 1, max: 6, mean: 3, over: 4, count: 4 },
  });
  const big = decodeValue(array(">i4", [2]), [new Uint8Array([0, 0, 0, 7, 0, 0, 1, 0]).buffer]);
  assert.deepEqual([big.stats.min, big.stats.max], [7, 256]); // big-endian read as such
  const frameValue = {
    $dataframe: {
      columns: ["score", "name"],
      data: [array("<i8", [2], 0), { $values: { dtype: "str", values: ["ann", "bo"] } }],
      index: { $index: { name: null, values: array("<f8", [2], 1) } },
    },
  };
  assert.deepEqual(decodeValue(frameValue, [new BigInt64Array([5n, 6n]).buffer, f8(0.5, 1.5)]), {
    kind: "table",
    columns: ["score", "name"],
    totalColumns: 2,
    index: [0.5, 1.5],
    cells: [[5, 6], ["ann", "bo"]],
    length: 2,
  });
  const series = decodeValue({ $series: { name: null, values: [1, 2, 3], index: { $range: [0, 6, 2] } } });
  assert.deepEqual(series.index, [0, 2, 4]);
  assert.deepEqual(series.columns, ["value"]);
  assert.deepEqual(decodeValue({ a: 1 }), { kind: "json", value: { a: 1 } });
});

test("a value shaped like the codec's markers, sent as text, is shown as invalid", () => {
  refused({ $ndarray: { dtype: "<f8", shape: [3], buffer: 0 } }, [], /buffer 0, but 0 came/);
  refused({ $ndarray: "<f8" }, [], /not an object/);
  refused({ $ndarray: null }, [], /not an object/);
  refused({ $dataframe: {} }, [], /columns or data are not lists/);
  refused({ $dataframe: { columns: ["a"], data: [], index: { $range: [0, 1, 1] } } }, [], /1 columns but has 0/);
  refused({ $series: { values: [1], index: 7 } }, [], /index is not an object/);
  refused({ $series: { values: [1], index: { $range: [0, 1, 0] } } }, [], /step other than 0/);
  refused({ $series: { values: "x", index: { $range: [0, 1, 1] } } }, [], /neither a list nor an array/);
  refused({ $series: { values: { $values: { values: 3 } }, index: { $range: [0, 1, 1] } } }, [], /no list/);
  refused({ $series: { values: [1], index: { $index: { values: null } } } }, [], /neither a list/);
});

test("a shape that claims more than its bytes is refused without allocating it", () => {
  refused(array("<f8", [1e8]), [new ArrayBuffer(16)], /needs 800000000 bytes, but 16 came/);
  refused(array("<f8", [1e4, 1e4, 1e4]), [new ArrayBuffer(16)], /but 16 came/);
  refused(array("<f8", [2 ** 52, 2 ** 52]), [new ArrayBuffer(16)], /but 16 came/);
  refused(array("<f8", [1]), [new ArrayBuffer(16)], /needs 8 bytes, but 16 came/);
  // A table whose index claims 10^8 rows but whose column holds 2.
  const table = { columns: ["a"], data: [array("<f8", [2])], index: { $range: [0, 1e8, 1] } };
  refused({ $dataframe: table }, [f8(1, 2)], /column 0 has 2 rows, but its index has 100000000/);
  refused({ $series: { name: "s", values: [1, 2], index: { $range: [0, 1e8, 1] } } }, [], /index has 100000000/);
  const list = { columns: ["a"], data: [[1, 2, 3]], index: { $index: { values: [1] } } };
  refused({ $dataframe: list }, [], /3 rows, but its index has 1/);
  refused({ $series: { values: array("<f8", [1, 2]), index: { $range: [0, 1, 1] } } }, [f8(1, 2)], /2 dimensions/);
});

test("dims that are negative, fractional, not numbers or too many are refused", () => {
  for (const shape of [[-2], [1.5], ["2"], [null], [NaN], [Infinity], "2", null, Array(33).fill(1)]) {
    refused(array("<f8", shape), [f8(1, 2)], /shape/);
  }
  for (const buffer of [-1, 1, 0.5, "0", null]) refused(array("<f8", [2], buffer), [f8(1, 2)], /buffer/);
});

test("unknown dtypes and buffers that are not bytes are refused", () => {
  for (const dtype of ["<O", "object", "<f", "<U0", "", 8, null, "<f8; drop", "x".repeat(10_000)]) {
    refused(array(dtype, [2]), [f8(1, 2)], /dtype/);
  }
  for (const buffer of [[1, 2], "AAAA", { byteLength: 16 }, new Float64Array(2), null]) {
    refused(array("<f8", [2]), [buffer], /not binary data/);
  }
});

test("a value nested too deep is refused without recursion", () => {
  let deep = 1;
  for (let i = 0; i < 100_000; i++) deep = [deep];
  refused(deep, [], /nested more than 64 levels/);
  let deepColumn = 1;
  for (let i = 0; i < 100; i++) deepColumn = { a: deepColumn };
  refused({ $series: { values: [deepColumn], index: { $range: [0, 1, 1] } } }, [], /column 0 is nested/);
});

test("non-finite numbers are shown as they are, and skipped by statistics", () => {
  assert.deepEqual(decodeValue(Infinity), { kind: "json", value: Infinity });
  const model = decodeValue(array("<f8", [4]), [f8(NaN, 1, Infinity, 3)]);
  assert.equal(model.stats.min, 1);
  assert.equal(model.stats.max, Infinity);
  assert.equal(decodeValue(array("<f8", [1]), [f8(NaN)]).stats, null);
});

test("only a bounded part of a large array or table is materialised", () => {
  const count = VALUE_LIMITS.sample * 3;
  const model = decodeValue(array("<f4", [count]), [new Float32Array(count).fill(2).buffer]);
  assert.deepEqual(model.stats, { min: 2, max: 2, mean: 2, over: VALUE_LIMITS.sample, count });
  const columns = Array.from({ length: 100 }, (_, i) => `c${i}`);
  const rows = 10_000;
  const table = decodeValue({
    $dataframe: { columns, data: columns.map(() => array("<f8", [rows])), index: { $range: [0, rows, 1] } },
  }, [new Float64Array(rows).buffer]);
  assert.equal(table.length, rows);
  assert.equal(table.totalColumns, 100);
  assert.equal(table.columns.length, VALUE_LIMITS.columns);
  assert.equal(table.cells.length, VALUE_LIMITS.columns);
  assert.ok(table.cells.every((cells) => cells.length === VALUE_LIMITS.rows));
  assert.equal(table.index.length, VALUE_LIMITS.rows);
});

test("binary frames are split by their header, and a lying header loses its buffers", () => {
  const header = { op: "data", topic: "t", buffers: [16], value: array("<f8", [2]) };
  const { header: parsed, buffers } = unpackBinary(frame(header, [f8(1, 2)]));
  assert.equal(parsed.topic, "t");
  assert.equal(decodeValue(parsed.value, buffers).stats.mean, 1.5);
  const liar = unpackBinary(frame({ ...header, buffers: [1e9] }, [f8(1, 2)]));
  assert.equal(liar.buffers.length, 0);
  assert.equal(decodeValue(liar.header.value, liar.buffers).kind, "invalid");
  const negative = unpackBinary(frame({ ...header, buffers: [-8, 16] }, [f8(1, 2)]));
  assert.equal(negative.buffers.length, 0);
  assert.throws(() => unpackBinary(new ArrayBuffer(2)), /shorter than its 4-byte header/);
  const short = new ArrayBuffer(8);
  new DataView(short).setUint32(0, 1e6, false);
  assert.throws(() => unpackBinary(short), /past its end/);
});
