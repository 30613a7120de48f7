"""The device runtime: one deterministic zipapp (`ftte-agent.pyz`) holding the agent and its engine.

On a device it needs only Python 3.9+, torch and safetensors. The module set is the import
closure of `ftte_cli.client` (found by reading the sources, not by importing them), so a new
engine module the agent starts to use travels without a list to update here. Package
`__init__` files are replaced by one-line stubs unless the agent imports a name from one of
them, so the device never runs package-level imports meant for the laptop.

Bytes are deterministic (fixed timestamps, sorted names, fixed permissions): an unchanged runtime
hashes the same, which is what lets `ftte deploy` skip an unchanged bundle.
"""

from __future__ import annotations

import ast
import hashlib
import io
import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ftte_cli.errors import FtteError

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../ftte_cli
ENTRY_MODULE = "ftte_cli.client.agent"
ENTRY_FUNCTION = "main"
RUNTIME_NAME = "ftte-agent.pyz"
DEVICE_THIRD_PARTY = frozenset({"torch", "safetensors"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
_SHEBANG = b"#!/usr/bin/env python3\n"
_MAIN = (
    '"""Entry point of the ftte device runtime."""\n'
    "import sys\n\n"
    f"from {ENTRY_MODULE} import {ENTRY_FUNCTION}\n\n"
    f"sys.exit({ENTRY_FUNCTION}())\n"
)
_STUB_INIT = '"""Package stub of the ftte device runtime."""\n'


@dataclass(frozen=True)
class Runtime:
    """A built runtime: its bytes, their sha256, and the modules it holds."""

    data: bytes
    sha256: str
    modules: tuple[str, ...]  # dotted names, sorted
    foreign_imports: tuple[str, ...]  # module-level imports outside stdlib/torch/safetensors


def build_runtime(package_root: Path = PACKAGE_ROOT) -> Runtime:
    """Build the zipapp in memory from the sources under `package_root` (the ftte_cli folder)."""
    entry = _module_path(package_root, ENTRY_MODULE)
    if entry is None:
        raise FtteError(f"{package_root}: {ENTRY_MODULE} not found; cannot build the runtime")
    closure, real_inits, foreign = _closure(package_root)
    files = _archive_files(package_root, closure, real_inits)
    data = _zip_bytes(files)
    if foreign:
        log.warning("device runtime imports outside torch/safetensors/stdlib: %s", sorted(foreign))
    return Runtime(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        modules=tuple(sorted(closure)),
        foreign_imports=tuple(sorted(foreign)),
    )


def write_runtime(path: Path, package_root: Path = PACKAGE_ROOT) -> Runtime:
    """Build the runtime and write it to `path` (only if the bytes changed)."""
    runtime = build_runtime(package_root)
    if not path.exists() or path.read_bytes() != runtime.data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(runtime.data)
    return runtime


# --- import closure -------------------------------------------------------------------------


def _module_path(root: Path, dotted: str) -> Path | None:
    """The source file of an ftte_cli module or package, or None when there is none."""
    rel = Path(*dotted.split(".")[1:])
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_package(root: Path, dotted: str) -> bool:
    return (root / Path(*dotted.split(".")[1:]) / "__init__.py").is_file()


def _closure(root: Path) -> tuple[set[str], set[str], set[str]]:
    """(modules reached from the client package, packages whose real __init__ is needed, foreign).

    Imports inside functions are followed too (the agent may import lazily), but only imports run
    at import time of an eagerly loaded module count as foreign: a laptop-only helper reached
    through a function-level import travels along and is simply never imported on the device.
    """
    client_dir = root / "client"
    start = {ENTRY_MODULE}
    start |= {f"ftte_cli.client.{p.stem}" for p in client_dir.glob("*.py") if p.stem != "__init__"}
    todo: list[tuple[str, bool]] = [(name, name == ENTRY_MODULE) for name in sorted(start)]
    seen: dict[str, bool] = {}
    real_inits, foreign = {"ftte_cli.client"}, set()
    while todo:
        name, eager = todo.pop()
        if name in seen and (seen[name] or not eager):
            continue
        seen[name] = eager
        path = _module_path(root, name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, imported_names, top_level in _imports(path, package):
            now_eager = eager and top_level
            if target.split(".")[0] != "ftte_cli":
                if now_eager and not _device_ok(target):
                    foreign.add(f"{target} (from {name})")
                continue
            todo.append((target, now_eager))
            for sub in imported_names:
                if _module_path(root, f"{target}.{sub}") is not None and _is_package(root, target):
                    todo.append((f"{target}.{sub}", now_eager))
                elif _is_package(root, target):
                    real_inits.add(target)  # a name defined in the package __init__ itself
    return set(seen), real_inits, foreign


def _device_ok(module: str) -> bool:
    top = module.split(".")[0]
    return top in DEVICE_THIRD_PARTY or top in sys.stdlib_module_names or top == "__future__"


def _imports(path: Path, package: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """(absolute module, names imported from it, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in _module_level(tree.body)}
    out: list[tuple[str, tuple[str, ...], bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, (), id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            out.append((base, tuple(a.name for a in node.names), id(node) in top_level))
    return out


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import time (descending into try/if, skipping `if TYPE_CHECKING`)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.dump(node.test):
                continue
            out += _module_level(node.body) + _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level(node.body)  # handlers are the fallbacks for missing modules
        else:
            out.append(node)
    return out


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


# --- archive ---------------------------------------------------------------------------------


def _archive_files(root: Path, modules: set[str], real_inits: set[str]) -> dict[str, bytes]:
    """Archive name -> bytes: each module's source, its packages' __init__ files, __main__.py."""
    files: dict[str, bytes] = {"__main__.py": _MAIN.encode()}
    for name in modules:
        path = _module_path(root, name)
        if path is None:
            continue
        arc = "ftte_cli/" + path.relative_to(root).as_posix()
        if path.name != "__init__.py" or name in real_inits:
            files[arc] = path.read_bytes()
        parts = name.split(".")
        for i in range(1, len(parts) if path.name != "__init__.py" else len(parts) + 1):
            pkg = ".".join(parts[:i])
            init = "/".join(parts[:i]) + "/__init__.py"
            if pkg in real_inits:
                files[init] = (root / Path(*parts[1:i]) / "__init__.py").read_bytes()
            else:
                files.setdefault(init, _STUB_INIT.encode())
    return files


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zipapp: shebang, sorted names, fixed times and permissions (same input, same bytes)."""
    buf = io.BytesIO()
    buf.write(_SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the building machine is
            zf.writestr(info, files[name], compresslevel=9)
    return buf.getvalue()
