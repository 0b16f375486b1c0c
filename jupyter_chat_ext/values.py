"""Live values on the wire: JSON, numpy arrays and pandas Series/DataFrames.

A value is a JSON tree in which arrays are placeholders pointing at raw buffers:

- ``{"$ndarray": {"dtype": "<f8", "shape": [3, 4], "buffer": 0}}``: C-order bytes;
- ``{"$series": {"name": ..., "values": <array or list>, "index": <index>}}``;
- ``{"$dataframe": {"columns": [...], "data": [<array or list>, ...], "index": <index>}}``;
- an index is ``{"$range": [start, stop, step]}``, an array or a list, with its name in
  ``{"$index": {"name": ..., "values": ...}}``.

Columns of Python objects (strings, say) travel as JSON lists. A value with no array
is plain JSON and goes in a text frame; one with arrays goes in a binary frame whose
buffers follow the JSON header (see docs/protocol.md). numpy and pandas are imported
only when such a value is published or received.

A received value comes from another user and is untrusted: :func:`decode` checks every
claim against the bytes received and returns an :class:`InvalidValue` instead of
raising (docs/protocol.md, "Invalid values").
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

MARKERS = ("$ndarray", "$series", "$dataframe", "$range", "$index", "$values")
_encoder = msgspec.json.Encoder()


class UnsupportedValue(TypeError):
    """A value that cannot be published; the message says what would work."""


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _is_pandas(value: Any, name: str) -> bool:
    return type(value).__module__.startswith("pandas") and type(value).__name__ == name


class _Encoder:
    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def column(self, values: Any) -> Any:
        """A pandas column or index: raw bytes if numeric, else JSON with its dtype."""
        import numpy as np

        dtype = values.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
            return self.array(values.to_numpy())
        return {"$values": {"dtype": str(dtype), "values": self.tree(values.tolist())}}

    def array(self, array: Any) -> Any:
        import numpy as np

        if array.dtype.hasobject:
            return array.tolist()  # strings and other objects travel as JSON
        array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        # As bytes: works for every fixed-size dtype (datetimes too), empty and 0-d arrays.
        self.buffers.append(memoryview(array.reshape(-1).view(np.uint8)))
        return {
            "$ndarray": {
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "buffer": len(self.buffers) - 1,
            }
        }

    def index(self, index: Any) -> Any:
        import pandas as pd

        if isinstance(index, pd.RangeIndex) and index.name is None:
            return {"$range": [index.start, index.stop, index.step]}
        return {"$index": {"name": self.tree(index.name), "values": self.column(index)}}

    def tree(self, value: Any) -> Any:
        if _is_numpy(value):
            return self.array(value)
        if _is_pandas(value, "Series"):
            return {
                "$series": {
                    "name": self.tree(value.name),
                    "values": self.column(value),
                    "index": self.index(value.index),
                }
            }
        if _is_pandas(value, "DataFrame"):
            return {
                "$dataframe": {
                    "columns": [self.tree(c) for c in value.columns],
                    "data": [self.column(value.iloc[:, i]) for i in range(value.shape[1])],
                    "index": self.index(value.index),
                }
            }
        if isinstance(value, dict):
            if len(value) == 1 and str(next(iter(value))) in MARKERS:
                raise TypeError(
                    f"a dict whose only key is {str(next(iter(value)))!r} is reserved for "
                    "arrays and tables (see docs/protocol.md); add a key or rename it"
                )
            return {str(k): self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        if type(value).__module__ == "numpy":  # numpy scalars
            return value.item()
        return value


def encode(value: Any) -> tuple[bytes, list[memoryview] | None]:
    """Encode a value: (JSON tree, raw buffers) — buffers is None for plain JSON."""
    encoder = _Encoder()
    try:
        tree = encoder.tree(value)
        header = _encoder.encode(tree)
    except (TypeError, msgspec.EncodeError) as exc:
        raise UnsupportedValue(
            f"cannot publish a {type(value).__name__}: {exc}. Publish numbers, strings, "
            "lists, dicts, numpy arrays or pandas Series/DataFrames"
        ) from None
    return header, (encoder.buffers or None)


_MAX_DEPTH = 200  # nesting of a received tree (lists, dicts, markers)
_MAX_DIMS = 32  # dimensions of a received array (numpy allows 64)
_MAX_DIM = 2**48  # any one dimension, even of an empty array
# Raw buffers: numbers, booleans, datetimes and fixed-size strings; never objects or voids.
_ARRAY_DTYPE = re.compile(
    r"[<>|=]?(?:b1|[iu][1248]|f[248]|c(?:8|16)|[mM]8(?:\[\d*(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?"
    r"|[SU][1-9]\d{0,5})"
)
# JSON columns: what the encoder writes for non-numeric pandas columns.
_COLUMN_DTYPES = frozenset(
    ["object", "str", "string", "category", "boolean", "Float32", "Float64"]
    + [f"{u}Int{bits}" for u in ("", "U") for bits in (8, 16, 32, 64)]
)
_TOP_MARKERS = ("$ndarray", "$series", "$dataframe")


class InvalidValue:
    """A received value that did not decode, kept in its place instead of raising.

    Another user may publish anything: a value whose markers lie (a shape its bytes do
    not hold, an unknown dtype), a number JSON cannot carry, a tree nested too deep.
    The client keeps such a value as an ``InvalidValue`` (in ``room.values``, the
    series, callbacks), so one bad topic never stops the others. ``raw`` is the start
    of the value's JSON text (at most :attr:`RAW_MAX` characters), ``reason`` says what
    was wrong.
    """

    RAW_MAX = 200
    __slots__ = ("raw", "reason")

    def __init__(self, raw: bytes | str, reason: str) -> None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        self.raw = text if len(text) <= self.RAW_MAX else text[: self.RAW_MAX] + "…"
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidValue({self.reason!r}, raw={self.raw!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InvalidValue):
            return NotImplemented
        return (self.raw, self.reason) == (other.raw, other.reason)

    def __hash__(self) -> int:
        return hash((self.raw, self.reason))


class _Invalid(Exception):
    """Why a received tree does not decode (becomes :class:`InvalidValue`)."""


def _shown(value: Any) -> str:
    """A short, safe rendering of a piece of a hostile tree for a reason."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spec(node: Any, marker: str, keys: set[str]) -> dict[str, Any]:
    """The body of a marker, which must be an object with exactly ``keys``."""
    spec = node[marker]
    if not isinstance(spec, dict) or set(spec) != keys:
        raise _Invalid(f"{marker} must be an object with exactly {sorted(keys)}")
    return spec


class _Decoder:
    """Builds arrays and tables from a checked tree; never trusts what a tree claims."""

    def __init__(self, buffers: list[memoryview], budget: int) -> None:
        self.buffers = buffers
        self.budget = budget  # bytes received: no index without data may claim more rows
        self.used: set[int] = set()
        self.depth = 0

    def ndarray(self, node: Any) -> Any:
        import numpy as np

        spec = _spec(node, "$ndarray", {"dtype", "shape", "buffer"})
        dtype_str, shape, index = spec["dtype"], spec["shape"], spec["buffer"]
        if not isinstance(dtype_str, str) or not _ARRAY_DTYPE.fullmatch(dtype_str):
            raise _Invalid(f"$ndarray dtype {_shown(dtype_str)} is not an allowed dtype")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(_is_int(n) and 0 <= n <= _MAX_DIM for n in shape)
        ):
            raise _Invalid(f"$ndarray shape {_shown(shape)} is not a list of sizes")
        if not _is_int(index) or not 0 <= index < len(self.buffers):
            raise _Invalid(
                f"$ndarray refers to buffer {_shown(index)}; the value has "
                f"{len(self.buffers)} buffers"
            )
        if index in self.used:
            raise _Invalid(f"buffer {index} is used by two arrays")
        self.used.add(index)
        dtype = np.dtype(dtype_str)
        count = 1
        for n in shape:
            count *= n
        raw = self.buffers[index]
        if count * dtype.itemsize != len(raw):
            raise _Invalid(
                f"$ndarray claims shape {_shown(shape)} of {dtype_str} "
                f"({count * dtype.itemsize} bytes) but buffer {index} has {len(raw)} bytes"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()

    def column(self, spec: Any) -> Any:
        """A Series' or DataFrame's column, or an index's values: always one-dimensional."""
        if isinstance(spec, list):
            return self.objects(spec)
        if isinstance(spec, dict) and len(spec) == 1 and "$values" in spec:
            import pandas as pd

            inner = _spec(spec, "$values", {"dtype", "values"})
            dtype, items = inner["dtype"], inner["values"]
            if dtype not in _COLUMN_DTYPES:
                raise _Invalid(f"$values dtype {_shown(dtype)} is not an allowed dtype")
            if not isinstance(items, list):
                raise _Invalid("$values values must be a list")
            objects = self.objects([self.tree(v) for v in items])
            return objects if dtype == "object" else pd.array(objects, dtype=dtype)
        if isinstance(spec, dict) and len(spec) == 1 and "$ndarray" in spec:
            array = self.ndarray(spec)
            if array.ndim != 1:
                raise _Invalid(f"a column must be one-dimensional, not of shape {array.shape}")
            return array
        raise _Invalid(f"a column must be a list, $values or $ndarray, not {_shown(spec)}")

    @staticmethod
    def objects(items: list[Any]) -> Any:
        import numpy as np

        array = np.empty(len(items), dtype=object)  # one slot per item received
        for i, item in enumerate(items):
            array[i] = item
        return array

    def index(self, spec: Any, length: int | None) -> Any:
        """An index of ``length`` entries (``None``: as many as the index carries)."""
        import pandas as pd

        if isinstance(spec, dict) and len(spec) == 1 and "$range" in spec:
            bounds = spec["$range"]
            if not (
                isinstance(bounds, list)
                and len(bounds) == 3
                and all(_is_int(b) and -(2**63) <= b < 2**63 for b in bounds)
                and bounds[2] != 0
            ):
                raise _Invalid(f"$range must be [start, stop, step], not {_shown(bounds)}")
            size = len(range(*bounds))
            if length is not None and size != length:
                raise _Invalid(f"$range has {size} entries for {length} rows")
            if length is None and size > self.budget:
                raise _Invalid(
                    f"$range claims {size} rows with no data; at most {self.budget} "
                    "(the bytes received) are accepted"
                )
            return pd.RangeIndex(*bounds)
        if isinstance(spec, dict) and len(spec) == 1 and "$index" in spec:
            inner = _spec(spec, "$index", {"name", "values"})
            values = self.column(inner["values"])
            if length is not None and len(values) != length:
                raise _Invalid(f"an index has {len(values)} entries for {length} rows")
            return pd.Index(values, name=self.label(inner["name"]))
        raise _Invalid(f"an index must be $range or $index, not {_shown(spec)}")

    def label(self, node: Any) -> Any:
        """A name: JSON, hashable (lists become tuples)."""
        if isinstance(node, list):
            return tuple(self.label(v) for v in node)
        if isinstance(node, dict):
            raise _Invalid("a name must not be an object")
        return node

    def series(self, node: Any) -> Any:
        import pandas as pd

        spec = _spec(node, "$series", {"name", "values", "index"})
        values = self.column(spec["values"])
        index = self.index(spec["index"], len(values))
        return pd.Series(values, index=index, name=self.label(spec["name"]), copy=False)

    def dataframe(self, node: Any) -> Any:
        import pandas as pd

        spec = _spec(node, "$dataframe", {"columns", "data", "index"})
        columns, data = spec["columns"], spec["data"]
        if not isinstance(columns, list) or not isinstance(data, list):
            raise _Invalid("$dataframe columns and data must be lists")
        if len(columns) != len(data):
            raise _Invalid(f"$dataframe names {len(columns)} columns but has {len(data)}")
        arrays = [self.column(d) for d in data]
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            raise _Invalid(f"$dataframe columns differ in length: {sorted(lengths)[:5]}")
        index = self.index(spec["index"], lengths.pop() if lengths else None)
        frame = pd.DataFrame(dict(enumerate(arrays)), index=index, copy=False)
        frame.columns = pd.Index([self.label(c) for c in columns])
        return frame

    def tree(self, node: Any) -> Any:
        """Decode a node; depth counts every level, through markers too."""
        if not isinstance(node, (dict, list)):
            return node
        if self.depth >= _MAX_DEPTH:
            raise _Invalid(f"the value is nested more than {_MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            if isinstance(node, list):
                return [self.tree(v) for v in node]
            if len(node) == 1:
                (key,) = node
                if key == "$ndarray":
                    return self.ndarray(node)
                if key == "$series":
                    return self.series(node)
                if key == "$dataframe":
                    return self.dataframe(node)
            return {k: self.tree(v) for k, v in node.items()}
        finally:
            self.depth -= 1


def _plainly_json(header: bytes) -> bool:
    r"""Whether JSON text certainly holds no marker and is nested within the limit.

    Every marker is a key starting with ``$`` (written ``"$``, or escaped with ``\u``),
    and a tree cannot be nested deeper than it has lists and dicts: scanning the bytes
    (in C) answers for most values without walking the decoded tree. ``False`` only
    means "walk it".
    """
    return (
        b'"$' not in header
        and b"\\u" not in header
        and header.count(b"{") + header.count(b"[") <= _MAX_DEPTH
    )


def _has_marker(node: Any, depth: int = 0) -> bool:
    """Whether a tree holds an array or table marker; raises if nested too deep."""
    if depth > _MAX_DEPTH:
        raise _Invalid(f"the value is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(node, dict):
        if len(node) == 1 and next(iter(node)) in _TOP_MARKERS:
            return True
        return any(_has_marker(v, depth + 1) for v in node.values())
    if isinstance(node, list):
        return any(_has_marker(v, depth + 1) for v in node)
    return False


def decode(
    header: bytes, sizes: list[int] | None = None, payload: memoryview | bytes | None = None
) -> Any:
    """Decode a received value from its JSON tree and (binary frames) its buffers.

    Never raises: a value that does not decode comes back as an :class:`InvalidValue`
    saying why. Every claim of the tree is checked against the bytes received (an
    array's dtype is one of numbers, booleans, datetimes or fixed-size strings, and its
    shape times its item size is exactly its buffer's length; each buffer backs one
    array; a table's columns and index have one length), so decoding allocates about
    as much as it received, never what a value claims. JSON has no NaN or Infinity:
    such a value (or a number too large for a float) is invalid.
    """
    try:
        tree = msgspec.json.decode(header)
        if not sizes and _plainly_json(header):
            return tree  # the common case (numbers, small dicts): no walk
        buffers: list[memoryview] = []
        received = len(header)
        if sizes:
            view = memoryview(payload if payload is not None else b"")
            if not all(_is_int(s) and s >= 0 for s in sizes) or sum(sizes) != len(view):
                raise _Invalid(f"buffer sizes {_shown(sizes)} do not add up to {len(view)} bytes")
            received += len(view)
            offset = 0
            for size in sizes:
                buffers.append(view[offset : offset + size])
                offset += size
        if not buffers and not _has_marker(tree):
            return tree
        return _Decoder(buffers, received).tree(tree)
    except _Invalid as exc:
        return InvalidValue(header, str(exc))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return InvalidValue(header, f"not valid JSON: {_short(exc)}")
    except Exception as exc:  # numpy or pandas refused what the checks let through
        return InvalidValue(header, f"{type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"


# ---------------------------------------------------------------- a value as one blob

VALUE_MIME = "application/vnd.jupyter-chat-ext.value"
_HEADER_BYTES = 4


class _Packed(msgspec.Struct):
    sizes: list[int]
    value: msgspec.Raw


def pack(value: Any) -> bytes:
    """A value as one byte string (an attachment of MIME type :data:`VALUE_MIME`).

    ``[4-byte big-endian header length][JSON {"sizes": [...], "value": tree}][buffers]``:
    the same tree and buffers as a binary ``data`` frame, so dtype, shape and index
    come back exactly. Raises :class:`UnsupportedValue` for what the codec cannot carry.
    """
    tree, buffers = encode(value)
    parts = [bytes(b) for b in buffers or ()]
    header = _encoder.encode({"sizes": [len(p) for p in parts], "value": msgspec.Raw(tree)})
    return b"".join([len(header).to_bytes(_HEADER_BYTES, "big"), header, *parts])


def unpack(data: bytes | memoryview) -> Any:
    """The value :func:`pack` made.

    Never raises: bytes that do not decode give an :class:`InvalidValue` saying why
    (an attachment comes from another user).
    """
    view = memoryview(data)
    if len(view) < _HEADER_BYTES:
        return InvalidValue(b"", "shorter than its 4-byte header length")
    size = int.from_bytes(view[:_HEADER_BYTES], "big")
    if _HEADER_BYTES + size > len(view):
        return InvalidValue(b"", "header length is past the end of the data")
    header = bytes(view[_HEADER_BYTES : _HEADER_BYTES + size])
    try:
        packed = msgspec.json.decode(header, type=_Packed)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return InvalidValue(header, "the header is not {sizes, value} JSON")
    return decode(bytes(packed.value), packed.sizes, view[_HEADER_BYTES + size :])
