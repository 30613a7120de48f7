"""Without the tensorboard extra, `ftte simulate --tensorboard` stops before it starts, naming
the extra to install (a child interpreter in which the package cannot be imported). The export
itself is checked in test_tensorboard.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.simkit import TINY

pytestmark = pytest.mark.slow


def test_without_the_extra_the_command_stops_first_naming_it(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY % ("1GB", 0.0))
    # The package made unimportable in a child interpreter: what a user without the extra has.
    code = ("import sys; sys.modules['tensorboard'] = None; from ftte_cli.cli import main; "
            f"sys.argv = ['ftte', 'simulate', '--recipe', {str(recipe)!r}, '--clients', '2', "
            f"'--out', {str(tmp_path / 'run')!r}, '--tensorboard', {str(tmp_path / 'tb')!r}]; "
            "main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr
    assert "--tensorboard: needs the tensorboard package: pip install " \
           "'ftte-cli[tensorboard]'" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()
