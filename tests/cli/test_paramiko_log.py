"""paramiko's log level is the CLI's business: set when a command runs, never at import."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftte_cli.cli import app

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.yaml"


@pytest.fixture
def paramiko_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("paramiko")
    before = logger.level
    logger.setLevel(logging.NOTSET)
    try:
        yield logger
    finally:
        logger.setLevel(before)


@pytest.mark.slow
def test_importing_the_fleet_and_the_api_leaves_paramiko_logging_alone() -> None:
    code = ("import logging, ftte_cli.api, ftte_cli.fleet.ssh, ftte_cli.fleet.profile; "
            "print(logging.getLogger('paramiko').level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == str(logging.NOTSET)


def test_a_command_quiets_paramiko_unless_ftte_paramiko_log_says_otherwise(
        paramiko_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTTE_PARAMIKO_LOG", raising=False)
    assert CliRunner().invoke(app, ["inventory", "list", "-i", str(LAB)]).exit_code == 0
    assert paramiko_logger.level == logging.CRITICAL
    monkeypatch.setenv("FTTE_PARAMIKO_LOG", "debug")
    assert CliRunner().invoke(app, ["inventory", "list", "-i", str(LAB)]).exit_code == 0
    assert paramiko_logger.level == logging.DEBUG
