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
"""

from __future__ import annotations

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


class _Decoder:
    def __init__(self, buffers: list[memoryview]) -> None:
        self.buffers = buffers

    def array(self, spec: Any) -> Any:
        import numpy as np

        if isinstance(spec, list):
            return np.array(spec, dtype=object)
        if "$values" in spec:
            import pandas as pd

            return pd.array(self.tree(spec["$values"]["values"]), dtype=spec["$values"]["dtype"])

        info = spec["$ndarray"]
        raw = self.buffers[info["buffer"]]
        dtype = np.dtype(info["dtype"])
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(info["shape"])).copy()

    def index(self, spec: Any) -> Any:
        import pandas as pd

        if "$range" in spec:
            return pd.RangeIndex(*spec["$range"])
        inner = spec["$index"]
        return pd.Index(self.array(inner["values"]), name=self.tree(inner["name"]))

    def tree(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                (key,) = node
                if key == "$ndarray":
                    return self.array(node)
                if key == "$series":
                    import pandas as pd

                    spec = node[key]
                    return pd.Series(
                        self.array(spec["values"]),
                        index=self.index(spec["index"]),
                        name=self.tree(spec["name"]),
                    )
                if key == "$dataframe":
                    import pandas as pd

                    spec = node[key]
                    columns = [self.tree(c) for c in spec["columns"]]
                    data = {i: self.array(d) for i, d in enumerate(spec["data"])}
                    frame = pd.DataFrame(data, index=self.index(spec["index"]))
                    frame.columns = pd.Index(columns)
                    return frame
            return {k: self.tree(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.tree(v) for v in node]
        return node


def decode(header: bytes, sizes: list[int] | None = None, payload: memoryview | None = None) -> Any:
    """Decode a value from its JSON tree and (for binary frames) its buffers."""
    tree = msgspec.json.decode(header)
    buffers: list[memoryview] = []
    if sizes:
        assert payload is not None
        offset = 0
        for size in sizes:
            buffers.append(payload[offset : offset + size])
            offset += size
    if not buffers and not _has_marker(tree):
        return tree
    return _Decoder(buffers).tree(tree)


def _has_marker(node: Any) -> bool:
    if isinstance(node, dict):
        return any(k in MARKERS for k in node) or any(_has_marker(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_marker(v) for v in node)
    return False
