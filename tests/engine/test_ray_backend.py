"""`--backend ray`: the same simulation on a local 2-CPU Ray instance equals the in-process one."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.simkit import assert_same_result, backend_recipe_text
from typer.testing import CliRunner

from ftte_cli.cli import app
from ftte_cli.config.recipe import Recipe, load_recipe
from ftte_cli.errors import ConfigError
from ftte_cli.sim.runner import SimSettings, prepare, run_strategy

ray = pytest.importorskip("ray")
from ftte_cli.sim.ray_backend import RayBackend, import_ray  # noqa: E402

# 50 clients (helpers.simkit.BACKEND: a sparse FTTE plan, dropout on, a few versions).
RECIPE = backend_recipe_text("ray50", clients=50, windows=1500)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _recipe(tmp_path: Path) -> Recipe:
    path = tmp_path / "ray50.yaml"
    path.write_text(RECIPE)
    return load_recipe(path)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fifty_clients_on_ray_equal_in_process(tmp_path: Path, local_ray: None) -> None:
    world = prepare(SimSettings(_recipe(tmp_path), strategies=("ftte", "fedbuff"),
                                stop_at_target=False, eval_samples=300))
    assert len(world.data.clients) == 50 and world.ftte.method != "dense"
    local = {n: run_strategy(world, n) for n in ("ftte", "fedbuff")}
    backend = RayBackend(workers=2)
    backend.start(world)
    try:
        remote = {n: run_strategy(world, n, backend=backend) for n in ("ftte", "fedbuff")}
        held = backend.shards_held()
    finally:
        backend.close()
    for name in local:
        assert local[name].metrics.evals[-1].version == 5
        assert local[name].metrics.jobs_lost + local[name].metrics.accepted > 0
        assert_same_result(local[name], remote[name])
        assert remote[name].train_cpu_s > 0  # the actors' CPU, reported back
    # each actor fetched only its own clients' shards (client i on actor i % 2)
    assert held[0] and held[1]
    assert all(c % 2 == k for k, clients in enumerate(held) for c in clients)
    assert ray.is_initialized()  # a Ray the caller started is left running


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_backend_ray_matches_in_process(tmp_path: Path, local_ray: None) -> None:
    recipe = tmp_path / "ray50.yaml"
    recipe.write_text(RECIPE)
    docs = {}
    for backend in ("inprocess", "ray"):
        res = CliRunner().invoke(app, [
            "simulate", "-r", str(recipe), "--strategies", "ftte", "--clients", "12",
            "--until", "limit", "--eval-samples", "200", "--backend", backend,
            "--out", str(tmp_path / backend), "--format", "json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        docs[backend] = [{k: v for k, v in s.items() if k not in ("wall_s", "cpu_s",
                                                                    "train_cpu_s")}
                         for s in doc["strategies"]]
    assert docs["ray"] == docs["inprocess"]


def test_missing_ray_is_a_one_line_usage_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives
    monkeypatch.chdir(tmp_path)  # the default run directory would be ./runs
    with pytest.raises(ConfigError, match=r"pip install 'ftte-cli\[ray\]'"):
        import_ray()
    recipe = tmp_path / "ray50.yaml"
    recipe.write_text(RECIPE)
    res = CliRunner().invoke(app, ["simulate", "-r", str(recipe), "--backend", "ray",
                                   "--format", "json"])
    assert res.exit_code == 2
    assert "pip install 'ftte-cli[ray]'" in res.output
    assert not (tmp_path / "runs").exists()
