"""Where a shared object came from, stamped in the kernel that shares it.

``{"notebook", "execution_count", "code", "versions"}``:

- ``notebook``: the notebook's path. JupyterLab and Notebook 7 start a notebook's kernel
  with ``JPY_SESSION_NAME`` (ipykernel copies it to the ``__session__`` global);
  VS Code sets ``__vsc_ipynb_file__``. A path under the Jupyter server's root is given
  relative to it (``analysis/train.ipynb``), so no home directory is shown. Kernels
  started without a session (``jupyter nbconvert --execute``, papermill, a console)
  know no notebook: set ``__session__ = "name.ipynb"`` in the notebook, or run with
  ``JPY_SESSION_NAME=name.ipynb``, to name it.
- ``execution_count``: the number of the running cell (``In [12]``).
- ``code``: the source of the running cell: the code of the execute request being
  handled, else the last input in IPython's history.
- ``versions``: ``{module: version}`` of the libraries the object belongs to.

Outside IPython the first three are null.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

SESSION_ENV = "JPY_SESSION_NAME"


def _shell() -> Any:
    """The running IPython shell, or None (IPython is never imported just for this)."""
    if "IPython" not in sys.modules:
        return None
    from IPython.core.getipython import get_ipython

    return get_ipython()


def _server_root() -> Path | None:
    """The root directory of the Jupyter server that started this kernel, if known."""
    from jupyter_core.paths import jupyter_runtime_dir

    pid = os.environ.get("JPY_PARENT_PID")
    if not pid or not pid.isdigit():
        return None
    try:
        info = json.loads((Path(jupyter_runtime_dir()) / f"jpserver-{pid}.json").read_text())
    except (OSError, ValueError):
        return None
    root = info.get("root_dir") if isinstance(info, dict) else None
    return Path(root) if isinstance(root, str) and root else None


def notebook_path(shell: Any = None) -> str | None:
    """The path of the notebook this kernel runs (see the module docstring), or None."""
    namespace = getattr(shell, "user_ns", None) or {}
    for name in ("__session__", "__vsc_ipynb_file__"):
        if isinstance(namespace.get(name), str) and namespace[name]:
            path: str = namespace[name]
            break
    else:
        path = os.environ.get(SESSION_ENV, "")
    if not path:
        return None
    if os.path.isabs(path):
        root = _server_root()
        if root is not None:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                pass
    return path


def cell_code(shell: Any) -> str | None:
    """The source of the cell running now, or None outside IPython."""
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "get_parent"):
        try:
            parent = kernel.get_parent("shell") or {}
        except (LookupError, TypeError):
            parent = {}
        if parent.get("header", {}).get("msg_type") == "execute_request":
            code = parent.get("content", {}).get("code")
            if isinstance(code, str):
                return code
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    if history:
        last = history[-1]
        return last if isinstance(last, str) else None
    return None


def versions(modules: tuple[str, ...]) -> dict[str, str]:
    """``{module: version}`` of those of ``modules`` that are imported and say their version."""
    found = {}
    for name in modules:
        version = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(version, str):
            found[name] = version
    return found


def stamp(modules: tuple[str, ...]) -> dict[str, Any]:
    """The provenance of an object of ``modules``' libraries shared from the running cell."""
    shell = _shell()
    count = getattr(shell, "execution_count", None)
    return {
        "notebook": notebook_path(shell),
        "execution_count": count if isinstance(count, int) else None,
        "code": cell_code(shell) if shell is not None else None,
        "versions": versions(modules),
    }
