"""What a shared object becomes (bytes, MIME type, kind, preview), and what a taken one is.

:func:`prepare` chooses by the object's type (see ``Room.share``); :func:`load` turns the
bytes of an attachment back into an object. Both run in the caller's thread, never on
the client's loop. Everything received is untrusted: :func:`load` never unpickles nor
evaluates anything, and checks the bytes against what the message claims.

Libraries (numpy, pandas, matplotlib, PIL, plotly) are imported only when an object
of theirs is shared or taken.
"""

from __future__ import annotations

import base64
import hashlib
import math
import mimetypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .. import values
from ..protocol import IMAGE_SIGNATURES, is_image
from .errors import ChatError

BUNDLE_MIME = "application/vnd.jupyter-chat-ext.bundle+json"
KINDS = ("figure", "image", "table", "array", "bundle", "file")
DEFAULT_MAX_ATTACHMENT_SIZE = 10 * 1024 * 1024  # the server's default max_attachment_size
PREVIEW_SVG_MAX = 24 * 1024  # a figure's SVG rides in its preview up to this size
MAX_PREVIEW_SIZE = 64 * 1024  # preview and provenance together, as JSON (max_preview_size)
CUT = "\n… (cut)"  # ends a cell's code that was too long for the provenance

TABLE_ROWS = 20  # rows of a table's preview
TABLE_COLUMNS = 50  # columns of a table's preview
CELL_CHARS = 80  # characters of one cell, index label or column name in a preview
SAMPLE_1D = 256  # numbers in a 1-D array's sample
SAMPLE_2D = 32  # rows and columns in a 2-D array's sample

# _repr_*_ methods, as IPython's display formatter knows them.
_REPR_METHODS = {
    "_repr_png_": "image/png",
    "_repr_jpeg_": "image/jpeg",
    "_repr_svg_": "image/svg+xml",
    "_repr_html_": "text/html",
    "_repr_markdown_": "text/markdown",
    "_repr_latex_": "text/latex",
    "_repr_json_": "application/json",
    "_repr_javascript_": "application/javascript",
}
# What a taken bundle shows when displayed: representations that cannot run script in
# the taker's page (HTML, SVG, Markdown and JavaScript can: they stay in ``.data``).
DISPLAYED_MIMES = frozenset(
    {"text/plain", "text/latex", "image/png", "image/jpeg", "image/gif", "image/webp"}
)


@dataclass
class Prepared:
    """An object made ready to share: its bytes and how to describe them."""

    data: bytes
    mime: str
    name: str
    kind: str
    preview: dict[str, Any] = field(default_factory=dict)
    libraries: tuple[str, ...] = ()  # modules whose versions go in the provenance


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _instance_of(obj: Any, module: str, qualname: str) -> bool:
    """``isinstance(obj, module.qualname)`` if ``module`` was imported (never imports it)."""
    if module not in sys.modules:
        return False
    target: Any = sys.modules[module]
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return isinstance(target, type) and isinstance(obj, target)


def too_large(size: int, limit: int) -> ChatError:
    """The error for an attachment of ``size`` bytes past the server's ``limit``."""
    return ChatError(
        "attachment_too_large",
        f"the attachment is {size} bytes; the server's limit is {limit} "
        f"({limit / 2**20:g} MiB). Share less (a downsampled array, the first rows of "
        "a table, a smaller figure), or ask the server's admin to raise "
        "max_attachment_size.",
    )


def prepare(obj: Any, mime: str | None, limit: int) -> Prepared:
    """Choose how to share ``obj``; raises :class:`ChatError` (nothing is sent then).

    ``attachment_too_large`` when its bytes would be over ``limit``; ``invalid_value``
    for what cannot be shared (the message lists what can).
    """
    if isinstance(obj, bytes | bytearray | memoryview):
        prepared = _raw(bytes(obj), mime)
    elif isinstance(obj, os.PathLike):
        prepared = _file(Path(os.fspath(obj)), mime, limit)
    elif mime is not None and not _instance_of(obj, "matplotlib", "figure.Figure"):
        raise ChatError(
            "invalid_field",
            f"mime= is for bytes, a file path or a matplotlib figure, not {type(obj).__name__}",
        )
    elif _instance_of(obj, "matplotlib", "figure.Figure"):
        prepared = _figure(obj, mime)
    elif _instance_of(obj, "PIL", "Image.Image"):
        prepared = _pil_image(obj)
    elif _instance_of(obj, "numpy", "ndarray"):
        if obj.nbytes > limit:  # never pack what cannot go
            raise too_large(obj.nbytes, limit)
        prepared = _value(obj, "array", "array.value", array_preview(obj), ("numpy",))
    elif _instance_of(obj, "pandas", "DataFrame") or _instance_of(obj, "pandas", "Series"):
        libraries = ("pandas", "numpy")
        prepared = _value(obj, "table", "table.value", table_preview(obj), libraries)
    elif _module_of(obj) == "plotly" and hasattr(obj, "to_json"):
        prepared = _plotly(obj)
    elif hasattr(obj, "_repr_mimebundle_") or any(hasattr(obj, m) for m in _REPR_METHODS):
        prepared = _bundle(obj)
    else:
        raise ChatError(
            "invalid_value",
            f"cannot share a {type(obj).__name__}: share a matplotlib figure, a PIL image, "
            "a numpy array, a pandas Series or DataFrame, an object that displays in "
            "Jupyter (Plotly, Altair, ...), bytes with mime=..., or a pathlib.Path",
        )
    if len(prepared.data) > limit:
        raise too_large(len(prepared.data), limit)
    return prepared


# ---- by type ------------------------------------------------------------------------


def _raw(data: bytes, mime: str | None) -> Prepared:
    if not mime:
        raise ChatError(
            "invalid_field", "bytes need a MIME type: share(data, mime='image/png'), say"
        )
    kind = "image" if mime.startswith("image/") else "file"
    extension = mimetypes.guess_extension(mime) or ""
    preview = image_size(data, mime) if kind == "image" else {}
    return Prepared(data, mime, f"{kind}{extension}", kind, preview)


def _file(path: Path, mime: str | None, limit: int) -> Prepared:
    try:
        size = path.stat().st_size
        if size > limit:  # never read a file that cannot go
            raise too_large(size, limit)
        data = path.read_bytes()
    except OSError as exc:
        raise ChatError("invalid_value", f"cannot read {path}: {exc.strerror or exc}") from None
    mime = mime or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    kind = "image" if mime.startswith("image/") else "file"
    preview = image_size(data, mime) if kind == "image" else {}
    return Prepared(data, mime, path.name, kind, preview)


def _figure(figure: Any, mime: str | None) -> Prepared:
    import io

    formats = {None: "png", "image/png": "png", "image/svg+xml": "svg"}
    if mime not in formats:
        raise ChatError("invalid_field", "a figure is shared as image/png or image/svg+xml")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=formats[mime], dpi=figure.dpi)
    data = buffer.getvalue()
    mime = mime or "image/png"
    if mime == "image/png":
        preview = image_size(data, mime)
        # Plus the figure as SVG when it is small (a line plot, a bar chart): readers
        # show it sharp at any zoom, straight from the message; the PNG stays the bytes.
        vector = io.BytesIO()
        figure.savefig(vector, format="svg")
        if len(vector.getvalue()) <= PREVIEW_SVG_MAX:
            preview["svg"] = vector.getvalue().decode("utf-8", "replace")
    else:
        width, height = figure.get_size_inches() * 72  # SVG is in points
        preview = {"width": round(float(width)), "height": round(float(height))}
    return Prepared(data, mime, f"figure.{formats[mime]}", "figure", preview, ("matplotlib",))


def _pil_image(image: Any) -> Prepared:
    import io

    if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):  # what PNG holds
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    preview = {"width": image.width, "height": image.height}
    return Prepared(buffer.getvalue(), "image/png", "image.png", "image", preview, ("PIL",))


def _value(
    obj: Any, kind: str, name: str, preview: dict[str, Any], libraries: tuple[str, ...]
) -> Prepared:
    try:
        data = values.pack(obj)
    except values.UnsupportedValue as exc:
        raise ChatError("invalid_value", str(exc).replace("publish", "share")) from None
    return Prepared(data, values.VALUE_MIME, name, kind, preview, libraries)


def _plotly(figure: Any) -> Prepared:
    """A Plotly figure as its own MIME type, whatever renderer is set (none, in a script)."""
    spec = msgspec.json.decode(figure.to_json())
    bundle = {"application/vnd.plotly.v1+json": spec, "text/plain": _cut(repr(figure), 4096)}
    return _bundle_prepared(bundle, type(figure).__name__, ("plotly",))


def _bundle(obj: Any) -> Prepared:
    bundle: dict[str, Any] = {}
    if hasattr(obj, "_repr_mimebundle_"):
        produced = obj._repr_mimebundle_(include=None, exclude=None)
        if isinstance(produced, tuple):  # (data, metadata)
            produced = produced[0]
        if isinstance(produced, dict):
            bundle.update(produced)
    for method, mime in _REPR_METHODS.items():
        if mime not in bundle and callable(getattr(obj, method, None)):
            produced = getattr(obj, method)()
            if isinstance(produced, tuple):
                produced = produced[0]
            if produced is not None:
                bundle[mime] = produced
    bundle.setdefault("text/plain", _cut(repr(obj), 4096))
    return _bundle_prepared(bundle, type(obj).__name__, (_module_of(obj),))


def _bundle_prepared(bundle: dict[str, Any], name: str, libraries: tuple[str, ...]) -> Prepared:
    """Keep what is text-safe, as Jupyter does: strings, JSON, images as base64 text."""
    kept: dict[str, Any] = {}
    for mime, data in bundle.items():
        if not isinstance(mime, str):
            continue
        if isinstance(data, bytes | bytearray):
            if mime.startswith("image/"):
                kept[mime] = base64.b64encode(data).decode("ascii")
            continue
        try:
            msgspec.json.encode(data)
        except (TypeError, msgspec.EncodeError, OverflowError, RecursionError):
            continue
        kept[mime] = data
    preview = {"mimes": sorted(kept)}
    data = msgspec.json.encode(kept)
    return Prepared(data, BUNDLE_MIME, f"{name.lower()}.json", "bundle", preview, libraries)


# ---- previews -----------------------------------------------------------------------


def image_size(data: bytes, mime: str) -> dict[str, Any]:
    """``{"width", "height"}`` of a PNG or GIF from its header, else ``{}``."""
    if mime == "image/png" and data[:8] == IMAGE_SIGNATURES["image/png"][0] and len(data) >= 24:
        return {
            "width": int.from_bytes(data[16:20], "big"),
            "height": int.from_bytes(data[20:24], "big"),
        }
    if mime == "image/gif" and data[:6] in IMAGE_SIGNATURES["image/gif"] and len(data) >= 10:
        return {
            "width": int.from_bytes(data[6:8], "little"),
            "height": int.from_bytes(data[8:10], "little"),
        }
    return {}


def _cut(text: str, limit: int = CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_preview(obj: Any, rows: int = TABLE_ROWS, columns: int = TABLE_COLUMNS) -> dict[str, Any]:
    """A table's shape, columns, dtypes and its first ``rows`` rows, every cell as a string.

    At most ``columns`` columns are shown; ``shape`` is the whole table's.
    """
    frame = obj.to_frame() if obj.ndim == 1 else obj
    head = frame.iloc[:rows, :columns]
    return {
        "shape": list(obj.shape),
        "columns": [_cut(str(c)) for c in head.columns],
        "dtypes": [str(d) for d in head.dtypes],
        "index": [_cut(str(label)) for label in head.index],
        "rows": [[_cut(str(cell)) for cell in row] for row in head.itertuples(index=False)],
    }


def _number(value: Any) -> float | int | None:
    """A sample or statistic as JSON: non-finite numbers are null."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def array_preview(array: Any, side: int = SAMPLE_2D, length: int = SAMPLE_1D) -> dict[str, Any]:
    """An array's dtype and shape; min, mean and max of its finite numbers; a small sample.

    The statistics are null unless the array is numeric (bool, int, float) with a finite
    element. The sample is a strided downsample: up to ``length`` numbers for a 1-D
    array, ``side`` x ``side`` for a 2-D one, null for other shapes.
    """
    import numpy as np

    preview: dict[str, Any] = {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "min": None,
        "mean": None,
        "max": None,
        "sample": None,
    }
    if array.dtype.kind not in "biuf":
        return preview
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array.reshape(-1)
    if finite.size:
        preview["min"] = _number(finite.min())
        preview["mean"] = _number(finite.mean(dtype=np.float64))
        preview["max"] = _number(finite.max())
    if array.ndim == 1:
        step = max(1, math.ceil(array.shape[0] / length))
        preview["sample"] = [_number(v) for v in array[::step].tolist()]
    elif array.ndim == 2:
        rows = max(1, math.ceil(array.shape[0] / side))
        cols = max(1, math.ceil(array.shape[1] / side))
        sample = array[::rows, ::cols].tolist()
        preview["sample"] = [[_number(v) for v in row] for row in sample]
    return preview


def describe(
    prepared: Prepared, provenance: dict[str, Any], limit: int = MAX_PREVIEW_SIZE
) -> dict[str, Any]:
    """The ``attachment`` fields of a ``send`` but ``upload``: kind, preview, provenance.

    Preview and provenance together stay within ``limit`` bytes of JSON (the server's
    ``max_preview_size``): the cell's code is cut to half of that at most, then a
    preview that is too large is cut down (fewer rows and columns, a smaller sample, then nothing).
    """

    def size(preview: dict[str, Any], prov: dict[str, Any]) -> int:
        return len(msgspec.json.encode({"preview": preview, "provenance": prov}))

    code = provenance.get("code")
    if isinstance(code, str) and size({}, provenance) > limit // 2:
        while code and size({}, {**provenance, "code": code + CUT}) > limit // 2:
            code = code[: len(code) // 2]
        provenance = {**provenance, "code": code + CUT}
    preview = prepared.preview
    for smaller in _smaller_previews(preview):
        if size(preview, provenance) <= limit:
            break
        preview = smaller
    return {"kind": prepared.kind, "preview": preview, "provenance": provenance}


def _smaller_previews(preview: dict[str, Any]) -> list[dict[str, Any]]:
    """Ever smaller versions of ``preview``, the last one empty."""
    smaller: list[dict[str, Any]] = []
    if "rows" in preview:
        for rows in (10, 5, 1):
            cut = {**preview, "index": preview["index"][:rows], "rows": preview["rows"][:rows]}
            smaller.append(cut)
        for columns in (10, 3):
            cut = {
                **smaller[-1],
                "columns": preview["columns"][:columns],
                "dtypes": preview["dtypes"][:columns],
                "rows": [row[:columns] for row in smaller[-1]["rows"]],
            }
            smaller.append(cut)
    if isinstance(preview.get("sample"), list):
        smaller.append({**preview, "sample": _shrink_sample(preview["sample"], 8)})
        smaller.append({**preview, "sample": None})
    if "svg" in preview:  # a figure: its size without the SVG (readers show the PNG)
        smaller.append({k: v for k, v in preview.items() if k != "svg"})
    if "mimes" in preview:
        smaller.append({"mimes": preview["mimes"][:20]})
    smaller.append({})
    return smaller


def _shrink_sample(sample: list[Any], side: int) -> list[Any]:
    step = max(1, math.ceil(len(sample) / side))
    return [_shrink_sample(v, side) if isinstance(v, list) else v for v in sample[::step]]


# ---- taking -------------------------------------------------------------------------


class Bundle:
    """A shared MIME bundle (Plotly, Altair, ...) taken into this kernel.

    ``data`` is the whole bundle, ``{mime: data}``, as shared. Displayed in Jupyter it
    shows only representations that cannot run script in your page (plain text,
    LaTeX, raster images, and JSON types such as Plotly's or Vega's, which their
    renderers draw from data): shared HTML, SVG, Markdown and JavaScript come from
    another person and stay in ``data``, for you to display only if you trust them.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __repr__(self) -> str:
        text = self.data.get("text/plain")
        return text if isinstance(text, str) else f"<Bundle {sorted(self.data)}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            mime: data
            for mime, data in self.data.items()
            if mime in DISPLAYED_MIMES or (mime.startswith("application/") and "json" in mime)
        }


def invalid(reason: str) -> ChatError:
    """The error for received attachment bytes that are not what their message says."""
    return ChatError(
        "invalid_attachment",
        f"the attachment could not be taken: {reason}. It was shared from another "
        "kernel; ask its author to share it again.",
    )


def check_bytes(data: bytes, attachment: dict[str, Any]) -> None:
    """Raise ``invalid_attachment`` unless ``data`` has the size and SHA-256 claimed."""
    size = attachment.get("size")
    if isinstance(size, int) and len(data) != size:
        raise invalid(f"{len(data)} bytes arrived; the message says {size}")
    digest = attachment.get("sha256")
    if isinstance(digest, str) and hashlib.sha256(data).hexdigest() != digest.lower():
        raise invalid("its SHA-256 is not the one the message names")


def load(data: bytes, attachment: dict[str, Any]) -> Any:
    """The object an attachment's bytes stand for (see ``Room.take``)."""
    mime = attachment.get("mime")
    if mime == values.VALUE_MIME:
        value = values.unpack(data)
        if isinstance(value, values.InvalidValue):
            raise invalid(value.reason)
        return value
    if mime == BUNDLE_MIME:
        try:
            bundle = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            raise invalid("the bundle is not JSON") from None
        if not isinstance(bundle, dict):
            raise invalid("the bundle is not a JSON object")
        return Bundle(bundle)
    if isinstance(mime, str) and mime in IMAGE_SIGNATURES:
        if not is_image(data, mime):
            raise invalid(f"the bytes are not {mime}")
        return _displayable_image(data, mime)
    return data


def _displayable_image(data: bytes, mime: str) -> Any:
    """An ``IPython.display.Image`` (``.data`` is the bytes) if IPython is there, else bytes."""
    try:
        from IPython.core.display import Image
    except ImportError:
        return data
    return Image(data=data, format=mime.split("/")[1])
