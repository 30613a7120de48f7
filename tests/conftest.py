"""Shared test set-up: one torch thread (2-core CI, several processes), deterministic seeds,
and the fixtures more than one file uses: the session testbed, a per-test and a per-module
sshd, a private HOME, and the bundle tests' recipe and initial parameters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.bundlekit import CLASSES, SHAPE, har_recipe
from helpers.sshd import SshServer, running_sshd
from helpers.testbed import Testbed, start_testbed

from ftte_cli.config.recipe import Recipe
from ftte_cli.fleet.bundle import initial_params
from ftte_cli.testbed import lifecycle

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """One four-device testbed for the whole test session."""
    directory = tmp_path_factory.mktemp("testbed")
    bed = start_testbed(directory)
    try:
        yield bed
    finally:
        report = lifecycle.down(directory)
        assert not report.leftovers, f"testbed left behind: {report.leftovers}"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH server on a loopback port for one test."""
    with running_sshd(tmp_path / "sshd") as srv:
        yield srv


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on a loopback port, shared by one test module's tests."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty HOME (an empty ~/.ssh): no known_hosts, ssh config or fabric.yaml of the
    machine's. Files that need it in every test use `pytest.mark.usefixtures("home")`."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    """har.yaml with a random start, for tests of bundles (a file may define its own `recipe`)."""
    return har_recipe()


@pytest.fixture(scope="module")
def params(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The initial model's parameters for `recipe`."""
    return initial_params(recipe, SHAPE, CLASSES)
