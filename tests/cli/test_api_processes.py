"""The public API against fresh processes: importing ftte_cli.api in a new interpreter leaves
torch unloaded and every listed name resolves, and api.plan's record equals the JSON the `ftte
plan` process prints. Documented errors and in-process round trips are in test_api.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.trainkit import FTTE, env, write_recipe

from ftte_cli import api

pytestmark = pytest.mark.slow


def test_import_is_cheap_and_every_public_name_resolves() -> None:
    code = "import sys, ftte_cli.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"  # torch loads only when a torch-backed name is used
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError):
        api.NoSuchName  # noqa: B018


def test_plan_is_the_json_ftte_plan_prints(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, extra="sim: {clients: 3}")
    result = api.plan(recipe, budget="2MB")
    assert capsys.readouterr() == ("", "")  # the API never prints
    assert isinstance(result.plan, api.Plan)
    assert result.budget_bytes == 2_000_000 and result.budget_source == "--budget"
    assert result.plan.estimated_bytes is not None
    assert result.plan.estimated_bytes <= result.budget_bytes
    cli = subprocess.run([*FTTE, "plan", "-r", str(recipe), "--budget", "2MB", "--format",
                          "json"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == json.loads(json.dumps(result.report))
