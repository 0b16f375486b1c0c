"""Hypothesis strategies for client frames: valid, malformed and plain garbage."""

from __future__ import annotations

import json

from hypothesis import strategies as st

NAMES = st.sampled_from(["fuzz", "other", "", "x" * 201, "bad\nname"]) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
OBJECT_FRAMES = st.fixed_dictionaries(
    {"op": st.sampled_from(["join", "leave", "send", "typing", "data", "history", "shout"])},
    optional={
        "room": NAMES | JSON_VALUES,
        "id": st.text(max_size=140) | JSON_VALUES,
        "body": st.text(max_size=60) | JSON_VALUES,
        "topic": NAMES | JSON_VALUES,
        "value": JSON_VALUES,
        "active": st.booleans() | JSON_VALUES,
        "before": st.integers(-5, 50) | JSON_VALUES,
        "limit": st.integers(-5, 500) | JSON_VALUES,
        "since": st.fixed_dictionaries({"epoch": st.text(max_size=20), "seq": st.integers(-1, 99)})
        | JSON_VALUES,
        "user": JSON_VALUES,
    },
)
RAW_FRAMES: st.SearchStrategy[str | bytes] = st.one_of(
    OBJECT_FRAMES.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=120),
    st.binary(max_size=120),
)
