"""Sharing and taking attachments.

First what an object becomes (bytes, MIME type, kind, preview, provenance) and what
bytes become when taken, with no server; then two clients of a real server share and
take each kind of object; then two real kernels, where the provenance names the
notebook and the cell.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from jupyter_chat_ext import ChatClient, ChatError, values
from jupyter_chat_ext.client import Bundle, provenance, share, transfer

from conftest import require, require_module
from helpers import Collector, JupyterServer, KernelSession, delegate, free_port

LIMIT = share.DEFAULT_MAX_ATTACHMENT_SIZE


def mixed_frame(rows: int = 30) -> pd.DataFrame:
    """A table of mixed dtypes on a DatetimeIndex."""
    return pd.DataFrame(
        {
            "count": np.arange(rows, dtype="int16"),
            "ratio": np.linspace(0, 1, rows),
            "label": [f"run {i}" for i in range(rows)],
            "ok": [i % 3 == 0 for i in range(rows)],
            "group": pd.Categorical(["a", "b"] * (rows // 2)),
        },
        index=pd.date_range("2024-03-01", periods=rows, freq="h", name="when"),
    )


def agg_figure() -> Any:
    """A matplotlib figure drawn with the Agg backend (no display needed)."""
    matplotlib = require_module("matplotlib", "pip install matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 3), dpi=80)
    figure.add_subplot().plot([1, 3, 2])
    return figure


# ---- what an object becomes ---------------------------------------------------------


def test_a_table_is_its_exact_value_with_a_preview_of_its_first_rows() -> None:
    frame = mixed_frame()
    prepared = share.prepare(frame, None, LIMIT)
    assert (prepared.kind, prepared.mime) == ("table", values.VALUE_MIME)
    pd.testing.assert_frame_equal(values.unpack(prepared.data), frame, check_freq=False)
    preview = prepared.preview
    assert preview["shape"] == [30, 5]
    assert preview["columns"] == ["count", "ratio", "label", "ok", "group"]
    assert preview["dtypes"][:2] == ["int16", "float64"] and preview["dtypes"][4] == "category"
    assert len(preview["rows"]) == len(preview["index"]) == share.TABLE_ROWS
    assert preview["index"][1] == "2024-03-01 01:00:00"
    assert preview["rows"][1] == ["1", str(frame["ratio"].iloc[1]), "run 1", "False", "b"]
    assert set(prepared.libraries) == {"pandas", "numpy"}


def test_a_series_is_a_table_of_one_column() -> None:
    series = pd.Series([1.5, 2.5], index=pd.Index(["x", "y"], name="k"), name="v")
    prepared = share.prepare(series, None, LIMIT)
    assert prepared.kind == "table"
    assert prepared.preview["columns"] == ["v"] and prepared.preview["shape"] == [2]
    pd.testing.assert_series_equal(values.unpack(prepared.data), series)


def test_an_array_preview_has_finite_statistics_and_a_small_sample() -> None:
    vector = np.linspace(-1, 1, 1000).astype("float32")
    vector[[3, 7]] = [np.nan, np.inf]
    preview = share.prepare(vector, None, LIMIT).preview
    assert preview["dtype"] == "float32" and preview["shape"] == [1000]
    finite = vector[np.isfinite(vector)]
    assert preview["min"] == float(finite.min()) and preview["max"] == float(finite.max())
    assert preview["mean"] == pytest.approx(float(finite.mean(dtype="f8")))
    assert 0 < len(preview["sample"]) <= share.SAMPLE_1D
    assert preview["sample"][0] == -1.0
    json.dumps(preview, allow_nan=False)  # no NaN or inf in the JSON
    grid = share.prepare(np.arange(100 * 70).reshape(100, 70), None, LIMIT).preview
    assert 0 < len(grid["sample"]) <= share.SAMPLE_2D
    assert all(0 < len(row) <= share.SAMPLE_2D for row in grid["sample"])
    assert grid["max"] == 6999 and grid["sample"][0][0] == 0
    cube = share.prepare(np.zeros((2, 3, 4), "float32"), None, LIMIT)
    assert cube.kind == "array" and cube.preview["sample"] is None
    assert cube.preview["mean"] == 0.0
    words = share.prepare(np.array(["a", "b"]), None, LIMIT).preview
    assert words["min"] is None and words["sample"] is None
    empty = share.prepare(np.array([np.nan]), None, LIMIT).preview
    assert empty["min"] is None and empty["sample"] == [None]


def test_a_figure_is_a_png_at_its_dpi() -> None:
    figure = agg_figure()
    prepared = share.prepare(figure, None, LIMIT)
    assert (prepared.kind, prepared.mime, prepared.name) == ("figure", "image/png", "figure.png")
    assert prepared.data.startswith(b"\x89PNG\r\n\x1a\n")
    # 4 x 3 inches at 80 dpi; a small figure also rides along as SVG in its preview
    assert (prepared.preview["width"], prepared.preview["height"]) == (320, 240)
    vector = prepared.preview["svg"]
    assert vector.lstrip().startswith("<?xml") and "<svg" in vector
    big = agg_figure()
    big.axes[0].plot(range(5000), [i % 7 for i in range(5000)])  # too many points for it
    assert "svg" not in share.prepare(big, None, LIMIT).preview
    tight = share.describe(prepared, {}, 2000)  # no room for it: the size is kept
    assert tight["preview"] == {"width": 320, "height": 240}
    svg = share.prepare(figure, "image/svg+xml", LIMIT)
    assert svg.mime == "image/svg+xml" and b"<svg" in svg.data
    with pytest.raises(ChatError) as refused:
        share.prepare(figure, "image/gif", LIMIT)
    assert refused.value.code == "invalid_field"


def test_a_pil_image_is_a_png_whatever_its_mode() -> None:
    image_module = require_module("PIL.Image", "pip install pillow")
    prepared = share.prepare(image_module.new("CMYK", (10, 20)), None, LIMIT)
    assert prepared.kind == "image" and prepared.data.startswith(b"\x89PNG")
    assert prepared.preview == {"width": 10, "height": 20}
    assert image_module.open(io.BytesIO(prepared.data)).size == (10, 20)


def test_a_plotly_figure_is_its_own_mime_type_even_with_no_renderer() -> None:
    graph_objects = require_module("plotly.graph_objects", "pip install plotly")
    figure = graph_objects.Figure(graph_objects.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    prepared = share.prepare(figure, None, LIMIT)
    assert (prepared.kind, prepared.mime) == ("bundle", share.BUNDLE_MIME)
    bundle = json.loads(prepared.data)
    assert bundle["application/vnd.plotly.v1+json"] == json.loads(figure.to_json())
    assert prepared.preview["mimes"] == ["application/vnd.plotly.v1+json", "text/plain"]


class Displayable:
    """An object that displays in Jupyter, as a library's would."""

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return {"text/html": "<b>hi</b>", "application/x-thing": object()}, {}

    def _repr_png_(self) -> bytes:
        return b"\x89PNG\r\n\x1a\nfake"

    def _repr_latex_(self) -> str:
        return "$x^2$"


def test_a_displayable_object_is_its_text_safe_bundle() -> None:
    prepared = share.prepare(Displayable(), None, LIMIT)
    bundle = json.loads(prepared.data)
    assert bundle["text/html"] == "<b>hi</b>" and bundle["text/latex"] == "$x^2$"
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG\r\n\x1a\nfake"
    assert "application/x-thing" not in bundle  # not JSON: left out
    assert bundle["text/plain"].startswith("<")


def test_bytes_need_a_mime_type_and_a_file_keeps_its_name(tmp_path: Path) -> None:
    with pytest.raises(ChatError) as refused:
        share.prepare(b"data", None, LIMIT)
    assert refused.value.code == "invalid_field"
    png = share.prepare(base64.b64decode(PNG_1x1), "image/png", LIMIT)
    assert png.kind == "image" and png.preview == {"width": 1, "height": 1}
    assert share.prepare(b"a,b\n", "text/csv", LIMIT).kind == "file"
    path = tmp_path / "results 1.csv"
    path.write_text("a,b\n1,2\n")
    prepared = share.prepare(path, None, LIMIT)
    assert (prepared.name, prepared.mime, prepared.kind) == ("results 1.csv", "text/csv", "file")
    assert prepared.data == b"a,b\n1,2\n"
    with pytest.raises(ChatError) as missing:
        share.prepare(tmp_path / "nope.csv", None, LIMIT)
    assert missing.value.code == "invalid_value" and "nope.csv" in str(missing.value)


def test_what_cannot_be_shared_says_what_can() -> None:
    with pytest.raises(ChatError) as refused:
        share.prepare({1, 2}, None, LIMIT)
    assert refused.value.code == "invalid_value" and "pathlib.Path" in str(refused.value)
    with pytest.raises(ChatError) as refused:
        share.prepare(np.zeros(3), "text/csv", LIMIT)
    assert refused.value.code == "invalid_field"


def test_over_the_limit_is_refused_before_anything_is_read_or_sent(tmp_path: Path) -> None:
    with pytest.raises(ChatError) as refused:
        share.prepare(np.zeros(1000), None, 4000)
    assert refused.value.code == "attachment_too_large"
    assert "8000 bytes" in str(refused.value) and "4000" in str(refused.value)
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        out.truncate(5000)  # sparse: its size is known without reading it
    with pytest.raises(ChatError) as refused:
        share.prepare(big, None, 4000)
    assert refused.value.code == "attachment_too_large"
    with pytest.raises(ChatError) as refused:
        share.prepare(mixed_frame(1000), None, 4000)
    assert refused.value.code == "attachment_too_large"


def test_preview_and_provenance_fit_in_64_kib() -> None:
    wide = share.prepare(pd.DataFrame(np.random.default_rng(1).random((30, 300))), None, LIMIT)
    long_code = {"notebook": "a.ipynb", "execution_count": 3, "code": '"' * 100_000}
    for prepared, prov in ((wide, {}), (wide, long_code)):
        fields = share.describe(prepared, {"versions": {}, **prov})
        encoded = msgspec.json.encode(
            {"preview": fields["preview"], "provenance": fields["provenance"]}
        )
        assert len(encoded) <= share.MAX_PREVIEW_SIZE
        assert fields["preview"]["rows"], "the preview was cut down, not dropped"
        assert fields["preview"]["shape"] == [30, 300]
    cut = share.describe(wide, {"versions": {}, **long_code})["provenance"]["code"]
    assert cut.startswith('"' * 100) and cut.endswith(share.CUT)
    small = share.prepare(np.arange(3), None, LIMIT)
    assert share.describe(small, long_code)["preview"] == small.preview


# ---- what taken bytes become --------------------------------------------------------

PNG_1x1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)


def described(data: bytes, mime: str, **extra: Any) -> dict[str, Any]:
    """An attachment as a message describes it."""
    return {"mime": mime, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


def test_taken_bytes_become_the_object_they_stand_for() -> None:
    array = np.arange(24, dtype="float32").reshape(2, 3, 4)
    data = values.pack(array)
    taken = share.load(data, described(data, values.VALUE_MIME))
    assert taken.dtype == array.dtype and (taken == array).all()
    png = base64.b64decode(PNG_1x1)
    image = share.load(png, described(png, "image/png"))
    assert image.data == png and "image/png" in image._repr_mimebundle_()[0]
    assert share.load(b"a,b", described(b"a,b", "text/csv")) == b"a,b"
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    assert share.load(svg, described(svg, "image/svg+xml")) == svg  # bytes, never displayed


def test_a_taken_bundle_displays_only_what_cannot_run_script() -> None:
    shared = {
        "text/plain": "Figure",
        "text/html": "<script>alert(1)</script>",
        "image/svg+xml": "<svg onload='alert(1)'/>",
        "application/javascript": "alert(1)",
        "text/markdown": "<img src=x onerror=alert(1)>",
        "application/vnd.plotly.v1+json": {"data": []},
        "image/png": PNG_1x1,
    }
    data = json.dumps(shared).encode()
    bundle = share.load(data, described(data, share.BUNDLE_MIME))
    assert isinstance(bundle, Bundle) and bundle.data == shared
    shown = bundle._repr_mimebundle_()
    assert set(shown) == {"text/plain", "application/vnd.plotly.v1+json", "image/png"}
    assert repr(bundle) == "Figure"


@pytest.mark.parametrize(
    ("data", "mime", "reason"),
    [
        (b"\x00\x00\x00\xffnot json", values.VALUE_MIME, "header length"),
        (b"[1, 2]", share.BUNDLE_MIME, "not a JSON object"),
        (b"{", share.BUNDLE_MIME, "not JSON"),
        (b"GIF89a-but-says-png", "image/png", "not image/png"),
        (b"RIFF0000WAVE", "image/webp", "not image/webp"),
    ],
)
def test_bytes_that_are_not_what_they_claim_are_refused(
    data: bytes, mime: str, reason: str
) -> None:
    with pytest.raises(ChatError) as refused:
        share.load(data, described(data, mime))
    assert refused.value.code == "invalid_attachment" and reason in str(refused.value)


def test_bytes_of_another_size_or_digest_are_refused() -> None:
    with pytest.raises(ChatError) as refused:
        share.check_bytes(b"abcd", described(b"abc", "text/plain"))
    assert refused.value.code == "invalid_attachment" and "4 bytes" in str(refused.value)
    with pytest.raises(ChatError) as refused:
        share.check_bytes(b"abd", described(b"abc", "text/plain"))
    assert "SHA-256" in str(refused.value)


# ---- provenance ---------------------------------------------------------------------


def test_outside_a_kernel_the_provenance_has_versions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(provenance.SESSION_ENV, raising=False)
    stamped = provenance.stamp(("numpy", "pandas", "not_a_module"))
    assert stamped["notebook"] is None and stamped["code"] is None
    assert stamped["execution_count"] is None
    assert stamped["versions"] == {"numpy": np.__version__, "pandas": pd.__version__}


def test_the_notebook_path_is_made_relative_to_the_server_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "jpserver-4242.json").write_text(json.dumps({"root_dir": str(tmp_path)}))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JPY_PARENT_PID", "4242")
    monkeypatch.setenv(provenance.SESSION_ENV, str(tmp_path / "analysis" / "train.ipynb"))
    assert provenance.notebook_path() == "analysis/train.ipynb"
    monkeypatch.setenv(provenance.SESSION_ENV, "/elsewhere/x.ipynb")
    assert provenance.notebook_path() == "/elsewhere/x.ipynb"

    class Shell:
        def __init__(self) -> None:
            self.user_ns = {"__session__": "named/by/hand.ipynb"}

    assert provenance.notebook_path(Shell()) == "named/by/hand.ipynb"


# ---- two people, a real server ------------------------------------------------------


def test_two_people_share_and_take_each_kind_of_object(
    server: JupyterServer, clients: Callable[..., ChatClient], tmp_path: Path
) -> None:
    delegation = delegate(server)[0]["delegation"]
    alice = clients(delegation=delegation)  # as a kernel speaking for its person
    bob = clients()
    shared_room, reading = alice.join("lab"), bob.join("lab")
    arrived = Collector()
    reading.on_message(arrived)
    plot = importlib.import_module("plotly.graph_objects") if find_spec("plotly") else None
    csv = tmp_path / "results.csv"
    csv.write_bytes(b"step,loss\n1,0.5\n2,0.25\n")
    figure = agg_figure()
    objects: dict[str, Any] = {
        "table": mixed_frame(),
        "cube": np.random.default_rng(7).random((4, 5, 6)).astype("float32"),
        "figure": figure,
        "file": csv,
    }
    if plot is not None:
        objects["plotly"] = plot.Figure(plot.Bar(x=["a", "b"], y=[2, 5]))
    sent = {name: shared_room.share(obj, f"the {name}") for name, obj in objects.items()}
    assert shared_room.share(np.arange(3))["body"] == ""  # no caption: an empty body
    kinds = {name: m["attachment"]["kind"] for name, m in sent.items()}
    assert kinds == {"table": "table", "cube": "array", "figure": "figure", "file": "file"} | (
        {"plotly": "bundle"} if plot else {}
    )
    for name, message in sent.items():
        attachment = message["attachment"]
        assert message["body"] == f"the {name}" and message["user"]["kernel"]
        assert attachment["url"].startswith(server.url), attachment["url"]  # absolute
        assert set(attachment["provenance"]) >= {"notebook", "execution_count", "code"}
    assert sent["table"]["attachment"]["provenance"]["versions"]["pandas"] == pd.__version__
    figure_preview = sent["figure"]["attachment"]["preview"]
    assert (figure_preview["width"], figure_preview["height"]) == (320, 240)
    assert "<svg" in figure_preview["svg"]  # a small figure rides along as SVG
    assert sent["file"]["attachment"]["name"] == "results.csv"
    assert sent["cube"]["attachment"]["preview"]["shape"] == [4, 5, 6]

    arrived.wait_for(len(sent) + 1)
    assert [m["seq"] for m in reading.attachments][:-1] == [m["seq"] for m in sent.values()]
    taken = {name: reading.take(message["seq"]) for name, message in sent.items()}
    pd.testing.assert_frame_equal(taken["table"], objects["table"], check_freq=False)
    assert taken["cube"].dtype == np.float32 and (taken["cube"] == objects["cube"]).all()
    png = share.prepare(figure, None, LIMIT).data
    assert taken["figure"].data == png  # an IPython Image: it displays; .data is the PNG
    assert taken["file"] == csv.read_bytes()
    require(plot is not None, "plotly is not installed (pip install plotly)")
    assert plot is not None
    plotly_json = taken["plotly"].data["application/vnd.plotly.v1+json"]
    assert plotly_json == json.loads(objects["plotly"].to_json())
    rebuilt = plot.Figure(plotly_json)  # the taker can make the figure again
    assert json.loads(rebuilt.to_json()) == json.loads(objects["plotly"].to_json())


def test_taking_what_is_not_shared_and_sharing_too_much_say_why(
    clients: Callable[..., ChatClient],
) -> None:
    alice, bob = clients(), clients()
    room, reading = alice.join("lab"), bob.join("lab")
    changed = Collector()
    reading.on_change(changed)
    plain = room.send("no attachment here")
    shared = room.share(np.arange(4), "to be deleted")
    room.delete(shared["seq"])
    changed.wait_until(lambda changes: any(m["deleted"] for m in changes))
    for seq, why in ((plain["seq"], "carries no attachment"), (shared["seq"], "was deleted")):
        with pytest.raises(ChatError) as refused:
            reading.take(seq)
        assert refused.value.code == "not_found" and why in str(refused.value)
    assert reading.attachments == []  # the deleted message's attachment is gone
    limit = alice.limits.max_attachment_size if alice.limits else 0
    assert limit == share.DEFAULT_MAX_ATTACHMENT_SIZE  # the server's, from hello
    with pytest.raises(ChatError) as refused:
        room.share(np.zeros(limit // 8 + 1))
    assert refused.value.code == "attachment_too_large"
    with pytest.raises(ChatError) as refused:
        room.share(b"GIF89a, not a PNG", mime="image/png")  # the server checks the bytes
    assert refused.value.code == "invalid_field" and "HTTP 400" in str(refused.value)
    assert room.send("after")["seq"] == shared["seq"] + 2  # the deletion, then this: nothing else


async def test_a_download_stops_at_the_size_it_may_have() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.web import Application, RequestHandler

    class Endless(RequestHandler):
        def get(self) -> None:
            self.write(b"x" * 100_000)  # more than the message said

    http = HTTPServer(Application([("/a", Endless)]))
    port = free_port()
    http.listen(port, "127.0.0.1")
    try:
        with pytest.raises(ChatError) as refused:
            await transfer.download(f"http://127.0.0.1:{port}/a", {}, 1000, 10)
        assert refused.value.code == "invalid_attachment" and "1000 bytes" in str(refused.value)
        data = await transfer.download(f"http://127.0.0.1:{port}/a", {}, 100_000, 10)
        assert len(data) == 100_000
    finally:
        http.stop()


# ---- two real kernels ---------------------------------------------------------------


class NotebookKernel(KernelSession):
    """The kernel of a notebook opened in JupyterLab: started for a session at ``path``."""

    def __init__(self, server: JupyterServer, path: str) -> None:
        self.server = server
        body = {"path": path, "name": Path(path).name, "type": "notebook"}
        session = server.api("POST", "api/sessions", {**body, "kernel": {"name": "python3"}})
        self.session_id = session["id"]
        self.id = session["kernel"]["id"]
        self.client = self.connect()

    def __exit__(self, *exc: object) -> None:
        self.client.stop_channels()
        self.server.api("DELETE", f"api/sessions/{self.session_id}")


SHARE_CELL = """\
import numpy as np
from jupyter_chat_ext import ChatClient
weights = np.linspace(0, 1, 12, dtype="float32").reshape(3, 4)
room = ChatClient().join("science")
shared = room.share(weights, "weights of run 7")
print(shared["seq"], get_ipython().execution_count)
"""

TAKE_CELL = """\
import json
from jupyter_chat_ext import ChatClient
room = ChatClient().join("science")
weights = room.take({seq})
print(json.dumps({{"dtype": str(weights.dtype), "values": weights.tolist(),
                   "provenance": room.attachments[-1]["attachment"]["provenance"]}}))
"""


def test_a_kernel_takes_what_another_shared_with_where_it_came_from(
    server: JupyterServer,
) -> None:
    (server.home / "analysis").mkdir()
    with NotebookKernel(server, "analysis/train.ipynb") as sharing:
        seq, count = map(int, sharing.run(SHARE_CELL).split())
    with NotebookKernel(server, "review.ipynb") as taking:
        taken = json.loads(taking.run(TAKE_CELL.format(seq=seq)))
    expected = np.linspace(0, 1, 12, dtype="float32").reshape(3, 4)
    assert taken["dtype"] == "float32" and taken["values"] == expected.tolist()
    stamped = taken["provenance"]
    assert stamped["notebook"] == "analysis/train.ipynb"
    assert stamped["execution_count"] == count
    assert stamped["code"] == SHARE_CELL
    assert stamped["versions"] == {"numpy": np.__version__}
