"""The shipped widget bundle is exactly what its source builds to, and its logic is tested."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import require
from helpers import install_lock

ROOT = Path(__file__).parent.parent
WIDGET = ROOT / "widget"
STATIC = ROOT / "jupyter_chat_ext" / "static"


def install_node_modules() -> None:
    """`npm ci` in widget/ unless what the build and the tests use is there."""
    npm = shutil.which("npm")
    require(npm is not None, "npm is not installed (it comes with Node.js)")
    assert npm is not None
    modules = WIDGET / "node_modules"
    with install_lock(str(modules)):  # not two `npm ci` at once (pytest-xdist workers)
        if not ((modules / ".bin" / "esbuild").exists() and (modules / "jsdom").exists()):
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=WIDGET, check=True, capture_output=True
            )


def test_committed_bundle_matches_its_source(tmp_path: Path) -> None:
    install_node_modules()
    built = tmp_path / "static"
    node = shutil.which("node")
    assert node is not None
    subprocess.run([node, "build.mjs", str(built)], cwd=WIDGET, check=True, capture_output=True)
    for name in ("widget.js", "widget.css"):
        assert (built / name).read_bytes() == (STATIC / name).read_bytes(), (
            f"jupyter_chat_ext/static/{name} is stale: run `npm run build` in widget/"
        )


def test_widget_unit_tests_pass() -> None:
    """The widget's logic has its own tests (node --test widget/test/)."""
    node = shutil.which("node")
    require(node is not None, "node is not installed")
    assert node is not None
    install_node_modules()  # the Markdown sanitizer's tests need jsdom
    run = subprocess.run(
        [node, "--test", "test/"], cwd=WIDGET, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout, run.stdout
