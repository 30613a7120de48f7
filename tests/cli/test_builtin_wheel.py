"""The installed wheel used from an empty directory: built from a copy of the sources, installed
alone into a fresh venv, it plans a built-in recipe by name. Lookup order, the CLI's message and
`ftte recipes` are checked in process in test_builtin.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ftte_cli.errors import ExitCode

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)  # har.yaml's warm start trains first: minutes on 2 shared cores
def test_the_installed_wheel_plans_a_built_in_recipe_from_an_empty_directory(
        tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, install it alone into a fresh venv (torch and
    the other dependencies come from this interpreter's site-packages, not a download)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("recipes", "inventory", "ftte_cli"):  # symlinks kept: builtin/ links to these
        shutil.copytree(REPO / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".ftte", "*_known_hosts"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("ftte_cli-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)],
                   check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    # Only the dependencies' folder: its .pth files (our own editable install) are not run.
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(venv / "bin" / "ftte"), "plan", "--recipe", "har.yaml",
                             "--budget", "2MB", "--format", "json"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=540)
    used = result.stderr.split("using the built-in recipe ", 1)[1].strip()
    assert Path(used).is_relative_to(venv) and Path(used).name == "har.yaml"
    doc = json.loads(result.stdout)
    # The recipe was found and planned: a plan within 2 MB, or (har.yaml's model at its batch
    # size needing more than that even for the head alone) exit 3 naming the smallest budget.
    if result.returncode == 0:
        assert doc["memory"]["plan"] <= 2 * 1000**2
    else:
        assert result.returncode == ExitCode.INFEASIBLE, result.stdout + result.stderr
        assert "the smallest budget that works is" in doc["error"]
    assert [p.name for p in empty.iterdir()] in ([], [".ftte"])  # at most the warm-start cache
