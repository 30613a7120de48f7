"""The reliability rules of issue 13 checked in process, without agents or subprocesses:
the progress watchdog, checkpoint resume after a torn write, input errors that name their place
and the server's notable-event window. The end-to-end faults are in test_reliability.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.loopback import make_server

from ftte_cli.engine.coordinator import Coordinator
from ftte_cli.engine.strategies import make_strategy
from ftte_cli.rundir.train import RunDir

# ---- the progress watchdog ---------------------------------------------------------------------

def test_watchdog_limit_follows_the_median_interval_and_names_the_stall() -> None:
    from ftte_cli.train.watchdog import Watchdog

    dog = Watchdog(factor=5.0, minimum=10.0, version=0, now=0.0)
    assert dog.observe(0, 9.9) is None  # before any version: only the minimum applies
    assert "no version yet" in (dog.observe(0, 10.5) or "")
    for v, t in ((1, 11.0), (2, 15.0), (4, 23.0)):  # 11 s, 4 s, 4 s per version: median 4
        assert dog.observe(v, t) is None
    assert dog.limit() == 20.0  # 5 x 4 s beats the 10 s minimum
    assert dog.observe(4, 43.0) is None
    reason = dog.observe(4, 43.5)
    assert reason is not None and "20s at v4" in reason and "median 4.0s" in reason
    assert Watchdog(None, 1.0, 0, 0.0).observe(0, 1e9) is None


# ---- fault 3: resume after a crash -------------------------------------------------------------

def _checkpointed_run(tmp_path: Path, versions: int) -> tuple[RunDir, Coordinator]:
    """A real coordinator driven to `versions` with a checkpoint at every version."""
    from helpers.coordkit import coordinator as _coord
    from helpers.coordkit import fake_update as _update

    coord = _coord(k=1, c=2, clients=2)
    rundir = RunDir(tmp_path / "run")
    now = 0.0
    while coord.version < versions:
        now += 1.0
        job = coord.next_jobs(now)[0]
        if coord.submit(_update(job), now).advanced:
            rundir.save_checkpoint(coord, now)
    return rundir, coord


@pytest.mark.parametrize("stage", ["tensors_partial", "tensors_written", "meta_partial",
                                   "meta_missing"])
def test_resume_uses_the_newest_complete_checkpoint_whatever_stage_the_kill_hit(
        tmp_path: Path, stage: str) -> None:
    rundir, _ = _checkpointed_run(tmp_path, 4)  # v2, v3, v4 kept
    folder = rundir.path / "checkpoints"
    newest = folder / "v000004.json"
    tensors = newest.with_suffix(".safetensors")
    if stage == "tensors_partial":  # killed while writing the tensors of v5
        (folder / ".v000005.safetensors.tmp4242").write_bytes(b"\x10\x00\x00")
    elif stage == "tensors_written":  # v5's tensors in place, killed while writing its JSON
        (folder / "v000005.safetensors").write_bytes(tensors.read_bytes())
        (folder / ".v000005.json.tmp4242").write_text('{"version": 5, "cou')
    elif stage == "meta_partial":  # the newest JSON torn (a filesystem without atomic rename)
        newest.write_text(newest.read_text()[:100])
    else:  # meta_missing: the newest JSON is gone, its tensors stay
        newest.unlink()
    (rundir.path / ".manifest.json.tmp4242").write_text("{")
    state = rundir.latest_checkpoint()
    expected = 3 if stage in ("meta_partial", "meta_missing") else 4
    assert state is not None and state[1]["version"] == expected
    left = sorted(p.name for p in folder.iterdir())
    assert left == [f"v{v:06d}.{ext}" for v in range(2, expected + 1)
                    for ext in ("json", "safetensors")]
    assert not list(rundir.path.glob(".*.tmp*"))
    rundir.close()


def test_resume_with_no_complete_checkpoint_names_each_broken_one(tmp_path: Path) -> None:
    from ftte_cli.errors import RunError

    rundir, _ = _checkpointed_run(tmp_path, 3)
    for meta in (rundir.path / "checkpoints").glob("v*.json"):
        meta.write_text("{")
    with pytest.raises(RunError) as err:
        rundir.latest_checkpoint()
    assert "v000003.json: not JSON" in str(err.value) and "v000001.json" in str(err.value)
    rundir.close()


def test_a_resumed_server_counts_on_from_the_checkpoint(tmp_path: Path) -> None:
    rundir, coord = _checkpointed_run(tmp_path, 5)
    state = rundir.latest_checkpoint()
    assert state is not None
    back = Coordinator.from_state(state[0], state[1], coord.plan,
                                  make_strategy(coord.config.strategy), coord.config)
    tokens = {cid: f"tok-{cid}" * 8 for cid in back.client_info()}
    snap = make_server(back, tokens, []).snapshot()
    assert snap.accepted == coord.metrics.accepted >= 5
    assert sum(d.accepted for d in snap.devices) == snap.accepted
    assert snap.staleness_max == max(coord.metrics.staleness)
    rundir.close()


# ---- fault 7: input errors that name their place ----------------------------------------------

def test_a_missing_data_path_names_the_recipe_and_the_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: npz, path: /nonexistent/data.npz}\n")
    res = CliRunner().invoke(app, ["plan", "-r", str(recipe), "--budget", "2MB",
                                   "--format", "json"])
    assert res.exit_code == 2
    error = json.loads(res.stdout)["error"]
    assert error == f"{recipe}: data.path: /nonexistent/data.npz: file not found"


def test_a_host_written_twice_in_one_mapping_is_an_error_naming_both_lines(
        tmp_path: Path) -> None:
    from ftte_cli.config.inventory import load_inventory
    from ftte_cli.errors import ConfigError

    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    pi1: {ansible_host: 10.0.0.1}\n    pi2: {}\n"
                   "    pi1: {ansible_host: 10.0.0.9}\n")
    with pytest.raises(ConfigError) as err:
        load_inventory(inv)
    assert str(err.value) == (f"{inv}: duplicate key 'pi1' at lines 3 and 5 of one mapping "
                              "(YAML would keep only the last)")
    # a merge key may repeat keys on purpose; the same name in two mappings is no duplicate
    inv.write_text("all:\n  vars: &v {ansible_user: pi, ansible_port: 22}\n  children:\n"
                   "    a: {hosts: {pi1: {}}, vars: {<<: *v, ansible_port: 2222}}\n"
                   "    b: {hosts: {pi1: {}}}\n")
    assert load_inventory(inv).devices["pi1"].port == 2222


def _npz(path: Path, n: int, **extra: Any) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(n, 1, 8, 8)).astype("float32"),
             y=np.arange(n) % 4, **extra)
    return path


def test_npz_split_array_gives_the_archives_own_test_set_and_unknown_arrays_are_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from ftte_cli.engine.data.loaders import load_npz
    from ftte_cli.errors import DataError

    split = (np.arange(40) >= 30).astype("int64")  # the last 10 samples are the test set
    src = load_npz(_npz(tmp_path / "ucr.npz", 40, split=split, notes=np.zeros(3)))
    assert src.train.x.shape[0] == 30 and src.test is not None and src.test.x.shape[0] == 10
    assert src.test.y.tolist() == [v % 4 for v in range(30, 40)]
    assert "ignoring arrays notes" in caplog.text
    with pytest.raises(DataError, match=r"bad\.npz: split must hold 0 \(train\) or 1 \(test\)"):
        load_npz(_npz(tmp_path / "bad.npz", 40, split=np.full(40, 2)))


def test_simulate_takes_its_client_count_from_data_clients(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftte_cli.cli import app

    data = _npz(tmp_path / "small.npz", 40)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: small
data: {{dataset: npz, path: {data}, partition: iid, clients: 3}}
model: {{name: small_cnn, width: 0.25}}
train: {{epochs: 1, batch_size: 4}}
strategy: {{buffer_size: 1, max_concurrency: 2}}
plan: {{memory_budget: 1GB, method: gradnorm}}
stop: {{max_versions: 2, eval_every: 1}}
sim: {{clients: 100}}
""")
    res = CliRunner().invoke(app, ["simulate", "-r", str(recipe), "--strategies", "ftte",
                                   "--until", "limit", "--out", str(tmp_path / "out"),
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["clients"] == 3  # data.clients, not sim.clients' 100


# ---- fault 8: notable events scroll away --------------------------------------------------------

def test_the_server_keeps_notable_events_past_its_event_window() -> None:
    from helpers.loopback import make_coordinator

    server = make_server(make_coordinator(["a"]), {"a": "t" * 40}, [], event_log_lines=10)
    server.event("device_offline", "a", "not seen for 10s")
    for i in range(200):
        server.event("update_accepted", "a", f"job j{i}")
    kinds = [e.kind for e in server.snapshot().events]
    assert kinds[0] == "device_offline" and kinds.count("update_accepted") == 10


def test_multi_group_hosts_resolve_as_recorded_ansible_inventory_output(
        caplog: pytest.LogCaptureFixture) -> None:
    """tests/data/ansible_inventory_list.json is `ansible-inventory -i
    precedence_inventory.yaml --list` of ansible-core 2.19.14 (recorded once, not a dependency):
    same-depth groups by priority then name, nested groups inner last, host vars on top."""
    from ftte_cli.config.inventory import load_inventory

    data = Path(__file__).parents[1] / "data"
    recorded = json.loads((data / "ansible_inventory_list.json").read_text())["_meta"]
    inventory = load_inventory(data / "precedence_inventory.yaml")
    assert inventory.hostvars == recorded["hostvars"]
    for name, want in recorded["hostvars"].items():
        device = inventory.devices[name]
        assert (device.host, device.port, device.user) == \
            (want["ansible_host"], want["ansible_port"], want["ansible_user"]), name
    warned = [r.getMessage() for r in caplog.records if "groups disagree" in r.getMessage()]
    assert any("host twice: ansible_host 10.0.0.2 from group lab_b" in w for w in warned)
    assert any("host prio: ansible_host 10.0.0.11 from group first" in w for w in warned)
    assert not any("host nested:" in w or "host hostvar: ansible_port" in w for w in warned)
