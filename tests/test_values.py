"""Live values of real types survive the wire exactly (pure encode/decode)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from jupyter_chat_ext import protocol, values


def round_trip(value: Any) -> Any:
    tree, buffers = values.encode(value)
    if buffers is None:
        return values.decode(tree)
    data = protocol.pack_binary(tree, list(buffers))
    header, payload = protocol.unpack_binary(data)
    return values.decode(header, [b.nbytes for b in buffers], payload)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype="<f8").reshape(3, 4),
        np.arange(24, dtype=">i4").reshape(2, 3, 4),
        np.array([True, False, True]),
        np.array([1 + 2j, 3 - 4j], dtype="c16"),
        np.array(["2024-01-01T00:00", "2025-06-30T12:30"], dtype="datetime64[m]"),
        np.float32(3.5) * np.ones((0, 5), dtype="f4"),
        np.array(7, dtype="u2"),
        np.arange(20, dtype="i8").reshape(4, 5).T,  # not C-contiguous
    ],
    ids=["f8", "i4-big-endian", "bool", "complex", "datetime", "empty", "0-d", "transposed"],
)
def test_numpy_arrays_keep_dtype_shape_and_values(array: Any) -> None:
    back = round_trip(array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_arrays_travel_as_raw_bytes_not_json_lists() -> None:
    array = np.arange(1000, dtype="f8")
    tree, buffers = values.encode({"x": array, "label": "run 1"})
    assert buffers is not None and buffers[0].nbytes == 8000
    assert len(tree) < 100  # a placeholder, not 1,000 numbers


def test_pandas_series_and_dataframes_round_trip_exactly() -> None:
    series = pd.Series([1.5, 2.5, None], index=["a", "b", "c"], name="loss")
    pd.testing.assert_series_equal(round_trip(series), series)
    frame = pd.DataFrame(
        {
            "step": np.arange(5, dtype="i8"),
            "loss": np.linspace(1, 0, 5),
            "ok": [True, False, True, True, False],
            "name": ["a", "b", "c", "d", "e"],
            "when": pd.date_range("2025-01-01", periods=5, freq="h"),
        }
    )
    pd.testing.assert_frame_equal(round_trip(frame), frame)
    indexed = frame.set_index("name")
    pd.testing.assert_frame_equal(round_trip(indexed), indexed)
    nested = round_trip({"frame": frame, "series": series, "n": 3})
    pd.testing.assert_frame_equal(nested["frame"], frame)
    assert nested["n"] == 3


def test_plain_json_needs_no_buffers_and_numpy_scalars_become_json() -> None:
    assert values.encode({"a": [1, 2.5, "x", None]})[1] is None
    assert round_trip({"n": np.int64(5), "f": np.float32(0.5)}) == {"n": 5, "f": 0.5}


def test_what_cannot_be_published_says_what_can() -> None:
    with pytest.raises(values.UnsupportedValue, match="numpy arrays or pandas"):
        values.encode(object())


def test_pack_round_trips_arrays_and_tables_exactly_and_unpack_never_raises() -> None:
    array = np.arange(24, dtype="float32").reshape(2, 3, 4)
    back = values.unpack(values.pack(array))
    assert back.dtype == array.dtype and back.shape == array.shape and (back == array).all()
    frame = pd.DataFrame(
        {"x": [1.5, 2.5], "n": [1, 2], "s": ["a", "b"]},
        index=pd.date_range("2024-01-01", periods=2, name="day"),
    )
    pd.testing.assert_frame_equal(values.unpack(values.pack(frame)), frame, check_freq=False)
    assert values.unpack(values.pack({"a": [1, 2]})) == {"a": [1, 2]}
    packed = values.pack(array)
    for bad in (b"", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02{}", packed[:-1], packed + b"x"):
        assert isinstance(values.unpack(bad), values.InvalidValue), bad
