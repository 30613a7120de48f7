"""The installed `ftte` console script, run as a process: `ftte inventory list` of the lab
inventory as JSON. The same commands in process are in test_fleet_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("home")]

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory" / "lab.yaml"


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ftte"), "inventory", "list", "-i", str(LAB),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "pixel-6" in json.loads(out.stdout)["_meta"]["hostvars"]
