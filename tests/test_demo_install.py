"""The README's first command installs everything the demo notebooks import."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def _imported_modules(notebook: Path) -> set[str]:
    """Top-level modules that the code cells of ``notebook`` import."""
    found: set[str] = set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(
            line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(distribution: str, extras: set[str]) -> set[str]:
    """Every distribution that ``pip install distribution[extras]`` installs."""
    seen: set[str] = set()
    todo = [(distribution, extras)]
    while todo:
        name, wanted = todo.pop()
        if _canonical(name) in seen:
            continue
        seen.add(_canonical(name))
        for requirement in metadata.requires(name) or []:
            spec, _, marker = requirement.partition(";")
            match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?", spec)
            assert match is not None, requirement
            if marker.strip():
                environment = marker.strip()
                extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", environment)
                if extra and extra.group(1) not in wanted:
                    continue
                if not extra and not _marker_holds(environment):
                    continue
            sub = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
            try:
                metadata.distribution(match.group(1))
            except metadata.PackageNotFoundError:
                continue  # not installed here: cannot provide a notebook's import
            todo.append((match.group(1), sub))
    return seen


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def test_demo_extra_installs_what_the_demo_notebooks_import() -> None:
    installed = _closure("jupyter_chat_ext", {"demo"})
    providers = metadata.packages_distributions()
    missing = {}
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        for module in _imported_modules(notebook):
            if module in sys.stdlib_module_names or module == "jupyter_chat_ext":
                continue
            owners = {_canonical(d) for d in providers.get(module, [])}
            assert owners, f"{notebook.name} imports {module}, which is not installed here"
            if not owners & installed:
                missing[f"{notebook.name}: {module}"] = sorted(owners)
    assert not missing, f"the demo extra does not install: {missing}"
