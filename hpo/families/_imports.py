"""A user's object by the name a study file gives it: ``"my_net.py:make"`` (a file, relative to the
working directory, like ``data.path``), ``"package.module:make"`` or ``"package.module.Name"``.

Every failure is a ``ValueError`` whose message names the thing and the fix; the caller adds the
file and key. A file is imported once per process (per file and name), so workers and stages reuse
one module object. Its module name (:func:`module_name`) comes from the path as the study file
writes it, not from where the checkout lies: a class of it is recorded by that name (skops records
an estimator's ``__module__``), so a model file made in one directory or on one machine loads in
a copy of the project elsewhere. Model files made before recorded ``hpo_user_`` and 12 hex digits
of the absolute path's hash (:func:`legacy_module`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import posixpath
import re
import sys
from pathlib import Path
from types import ModuleType
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


#: the files imported so far, by (module name, resolved path)
_FILES: dict[tuple[str, Path], ModuleType] = {}
_LEGACY = re.compile(r"hpo_user_[0-9a-f]{12}")


def module_name(module: str) -> str:
    """The module name of a file as the study file names it (``"examples/residual_mlp.py"`` ->
    ``hpo_user_residual_mlp_`` and 8 hex digits of the normalised path's hash): the same in every
    checkout and on every machine, whatever the working directory's absolute path."""
    text = posixpath.normpath(module.replace("\\", "/"))
    stem = re.sub(r"\W", "_", posixpath.basename(text).removesuffix(".py")) or "module"
    return f"hpo_user_{stem}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def legacy_module(name: str) -> bool:
    """A module name of an older hpo, which hashed the file's absolute path."""
    return _LEGACY.fullmatch(name) is not None


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` names an object of a file (``"my_est.py:MyEstimator"``)."""
    return ":" in spec and _is_file(spec.rpartition(":")[0])


def _import_file(module: str) -> Any:
    path = Path(module).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{module}: no such file (relative paths start at the working directory, {Path.cwd()})"
        )
    resolved = path.resolve()
    name = module_name(module)
    loaded = _FILES.get((name, resolved))
    if loaded is None:
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise ValueError(f"{module}: cannot be imported as a Python file; give it a .py name")
        loaded = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(name)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as exc:
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
            raise ValueError(
                f"{module}: importing it raised {type(exc).__name__}: {first_line(exc, 160)}"
            ) from None
        _FILES[(name, resolved)] = loaded
    # the name resolves to this file (another file of the same relative name may have held it):
    # skops finds a saved estimator's class by it
    sys.modules[name] = loaded
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
