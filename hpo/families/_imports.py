"""A user's object by the name a study file gives it: ``"my_net.py:make"`` (a file, relative to the
working directory, like ``data.path``), ``"package.module:make"`` or ``"package.module.Name"``.

Every failure is a ``ValueError`` whose message names the thing and the fix; the caller adds the
file and key. A file is imported once per process under a name derived from its resolved path,
so workers and stages reuse one module object.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from hpo.errors import first_line


def split_spec(spec: str) -> tuple[str, str]:
    """``"a/b.py:make"`` -> ("a/b.py", "make"); ``"pkg.mod.Name"`` -> ("pkg.mod", "Name")."""
    if ":" in spec:
        module, _, name = spec.rpartition(":")
    else:
        module, _, name = spec.rpartition(".")
    if not module or not name or not name.isidentifier():
        raise ValueError(
            f"{spec!r} is not an import path; write 'my_net.py:make', 'package.module:make' "
            "or 'package.module.Name'"
        )
    return module, name


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _import_file(module: str) -> Any:
    path = Path(module).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{module}: no such file (relative paths start at the working directory, {Path.cwd()})"
        )
    resolved = path.resolve()
    name = "hpo_user_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"{module}: cannot be imported as a Python file; give it a .py name")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(
            f"{module}: importing it raised {type(exc).__name__}: {first_line(exc, 160)}"
        ) from None
    return loaded


def load_object(spec: str) -> Any:
    """The object ``spec`` names (ValueError saying what is wrong and how to fix it)."""
    module, name = split_spec(spec)
    if _is_file(module):
        loaded = _import_file(module)
    else:
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or module
            raise ValueError(
                f"module {module!r} cannot be imported (no module named {missing!r}); install it, "
                "or give a file path such as 'my_net.py:make'"
            ) from None
        except Exception as exc:
            raise ValueError(
                f"module {module!r}: importing it raised {type(exc).__name__}: {first_line(exc, 160)}"
            ) from None
    try:
        return getattr(loaded, name)
    except AttributeError:
        public = sorted(n for n in vars(loaded) if not n.startswith("_") and callable(getattr(loaded, n)))
        shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
        raise ValueError(f"{module} has no {name!r}; it defines: {shown or 'nothing callable'}") from None
