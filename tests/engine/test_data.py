"""engine/data: synthetic HAR, loaders on files written here, partitioners, the federated split."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftte_cli.config.recipe import DataConfig, InitConfig
from ftte_cli.engine.data import ClientData, Dataset, FederatedData, load_federated, synthetic_har
from ftte_cli.engine.data.loaders import (
    CIFAR_RECORD,
    load_cifar10,
    load_digits,
    load_npz,
    load_uci_har,
)
from ftte_cli.engine.data.partition import MIN_CLIENT_SAMPLES, PARTITIONERS, partition
from ftte_cli.errors import DataError, ExitCode

# ---------------------------------------------------------------------------------------------
# synthetic HAR


def test_synthetic_shapes_and_determinism() -> None:
    x, y, g = synthetic_har.generate(600, 30, seed=3)
    assert x.shape == (600, 9, 128) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and g.dtype == torch.int64
    assert torch.bincount(y, minlength=6).tolist() == [100] * 6  # balanced labels
    assert 0 <= int(g.min()) and int(g.max()) < 30 and len(g.unique()) == 30
    x2, y2, g2 = synthetic_har.generate(600, 30, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(g, g2)
    x3, _, _ = synthetic_har.generate(600, 30, seed=4)
    assert not torch.equal(x, x3)


def test_synthetic_generates_10k_windows_in_under_5s() -> None:
    start = time.process_time()  # CPU time: a busy machine must not fail it
    x, _, _ = synthetic_har.generate(10_000, 30, seed=1)
    elapsed = time.process_time() - start
    assert x.shape == (10_000, 9, 128)
    assert elapsed < 5.0, f"generation took {elapsed:.2f} s"


def test_synthetic_static_postures_differ_by_gravity() -> None:
    x, y, _ = synthetic_har.generate(3000, 30, seed=1)
    gravity = x[:, 6:9].mean(2)  # mean total acceleration, (N, 3), in g
    norm = gravity.norm(dim=1)  # 1 g, up to each person's sensor gain and bias
    assert abs(float(norm.mean()) - 1) < 0.05 and float((norm - 1).abs().max()) < 0.45
    means = {a: gravity[y == i].mean(0) for i, a in enumerate(synthetic_har.ACTIVITIES)}
    angle = lambda a, b: torch.arccos(torch.dot(means[a], means[b]) /  # noqa: E731
                                      (means[a].norm() * means[b].norm())).item()
    assert angle("standing", "lying") > 1.2
    assert angle("standing", "sitting") > 0.3
    # moving windows share the upright posture: gravity alone cannot tell them from standing
    assert angle("standing", "walking") < 0.05


# ---------------------------------------------------------------------------------------------
# loaders: tiny files written by the tests


def _write_uci(root: Path, rows: dict[str, int], seed: int = 0) -> Path:
    """A UCI HAR Dataset folder with `rows[split]` windows; labels cycle 1..6, 3 subjects."""
    rng = np.random.default_rng(seed)
    base = root / "UCI HAR Dataset"
    for split, n in rows.items():
        signals = base / split / "Inertial Signals"
        signals.mkdir(parents=True)
        for sig in ("body_acc", "body_gyro", "total_acc"):
            for axis in "xyz":
                np.savetxt(signals / f"{sig}_{axis}_{split}.txt", rng.normal(size=(n, 128)))
        np.savetxt(base / split / f"y_{split}.txt", np.arange(n) % 6 + 1, fmt="%d")
        first = 1 if split == "train" else 20
        np.savetxt(base / split / f"subject_{split}.txt", np.arange(n) % 3 + first, fmt="%d")
    (base / "activity_labels.txt").write_text(
        "1 WALKING\n2 WALKING_UPSTAIRS\n3 WALKING_DOWNSTAIRS\n4 SITTING\n5 STANDING\n6 LAYING\n")
    return base


def test_uci_har_loader(tmp_path: Path) -> None:
    base = _write_uci(tmp_path, {"train": 12, "test": 6})
    source = load_uci_har(tmp_path)  # the parent folder works too
    assert source.train.x.shape == (12, 9, 128) and source.test is not None
    assert source.test.x.shape == (6, 9, 128)
    assert source.train.y.tolist() == [i % 6 for i in range(12)]
    assert source.train.groups is not None and set(source.train.groups.tolist()) == {1, 2, 3}
    assert source.class_names[-1] == "laying" and source.num_classes == 6
    expected = np.loadtxt(base / "train" / "Inertial Signals" / "body_gyro_y_train.txt")
    assert np.allclose(source.train.x[:, 4].numpy(), expected, atol=1e-6)  # channel order
    assert torch.equal(load_uci_har(base).train.x, source.train.x)


def test_uci_har_malformed_and_missing_files_name_the_file(tmp_path: Path) -> None:
    base = _write_uci(tmp_path, {"train": 6, "test": 6})
    bad = base / "train" / "Inertial Signals" / "total_acc_z_train.txt"
    bad.write_text("\n".join(" ".join(["0.1"] * 127) for _ in range(6)) + "\n")
    with pytest.raises(DataError, match=r"total_acc_z_train\.txt: expected 128 values") as err:
        load_uci_har(base)
    assert err.value.exit_code == ExitCode.USAGE and "\n" not in str(err.value)
    bad.write_text("1.0 abc\n")
    with pytest.raises(DataError, match=r"total_acc_z_train\.txt: malformed numbers"):
        load_uci_har(base)
    bad.unlink()
    with pytest.raises(DataError, match=r"total_acc_z_train\.txt: file not found"):
        load_uci_har(base)
    with pytest.raises(DataError, match="UCI HAR folder not found"):
        load_uci_har(tmp_path / "nowhere")


def test_uci_har_row_counts_must_agree(tmp_path: Path) -> None:
    base = _write_uci(tmp_path, {"train": 6, "test": 6})
    np.savetxt(base / "test" / "subject_test.txt", np.arange(5) + 1, fmt="%d")
    with pytest.raises(DataError, match=r"subject_test\.txt: 5 rows, but y_test\.txt has 6"):
        load_uci_har(base)


def test_npz_loader(tmp_path: Path) -> None:
    path = tmp_path / "sensors.npz"
    x = np.random.default_rng(0).normal(size=(40, 2, 16)).astype(np.float64)
    np.savez(path, X=x, y=np.arange(40) % 4, groups=np.arange(40) % 5)
    source = load_npz(path)
    assert source.train.x.shape == (40, 2, 16) and source.train.x.dtype == torch.float32
    assert source.num_classes == 4 and source.test is None and source.name == "sensors"
    assert source.train.groups is not None and source.train.groups.max() == 4
    np.savez(path, X=x, y=np.arange(40) % 4, X_test=x[:5], y_test=np.arange(5) % 4,
             class_names=np.array(["a", "b", "c", "d"]))
    source = load_npz(path)
    assert source.test is not None and len(source.test) == 5
    assert source.class_names == ["a", "b", "c", "d"]


@pytest.mark.parametrize("arrays,message", [
    ({"X": np.zeros((4, 3))}, "missing array 'y'"),
    ({"X": np.zeros((4, 3)), "y": np.arange(3)}, "y has 3 labels but X has 4 rows"),
    ({"X": np.zeros((4, 3)), "y": np.array([0, 1, -1, 2])}, "labels must be in >= 0"),
    ({"X": np.zeros((4, 3)), "y": np.array([0.5, 1, 1, 2])}, "labels must be integers"),
    ({"X": np.full((4, 3), np.nan), "y": np.arange(4)}, "X contains NaN"),
    ({"X": np.array([{"a": 1}] * 4, dtype=object), "y": np.arange(4)}, "not a readable .npz"),
])
def test_npz_malformed_names_the_file(tmp_path: Path, arrays: dict[str, np.ndarray],
                                      message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are pickled by numpy: loading them must refuse
    with pytest.raises(DataError, match=message) as err:
        load_npz(path)
    assert str(err.value).startswith(str(path))


def test_npz_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none\.npz: file not found"):
        load_npz(tmp_path / "none.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"garbage\.npz: not a readable \.npz"):
        load_npz(garbage)


def _cifar_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    path.write_bytes(records.tobytes())
    return pixels


def test_cifar10_loader(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    first = _cifar_batch(root / "data_batch_1.bin", [0, 1, 2, 3, 4], seed=0)
    _cifar_batch(root / "data_batch_2.bin", [5, 6, 7, 8, 9], seed=1)
    _cifar_batch(root / "test_batch.bin", [9, 8, 7], seed=2)
    source = load_cifar10(tmp_path)
    assert source.train.x.shape == (10, 3, 32, 32) and source.train.y.tolist() == list(range(10))
    assert source.test is not None and source.test.y.tolist() == [9, 8, 7]
    # pixel layout: 1024 red, then green, then blue, row-major
    assert source.train.x[0, 1, 0, 5].item() == pytest.approx(first[0, 1024 + 5] / 255.0)
    assert source.class_names[0] == "airplane"


def test_cifar10_malformed_and_missing_name_the_file(tmp_path: Path) -> None:
    _cifar_batch(tmp_path / "data_batch_1.bin", [0, 1], seed=0)
    with pytest.raises(DataError, match=r"test_batch\.bin: file not found"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * (CIFAR_RECORD + 7))
    with pytest.raises(DataError, match=r"test_batch\.bin: size 3080 bytes is not a whole"):
        load_cifar10(tmp_path)
    _cifar_batch(tmp_path / "test_batch.bin", [12], seed=0)
    with pytest.raises(DataError, match=r"test_batch\.bin: label 12 out of range"):
        load_cifar10(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"data_batch_1\.bin: file not found"):
        load_cifar10(empty)


def test_digits_loader() -> None:
    pytest.importorskip("sklearn")
    source = load_digits()
    assert source.train.x.shape == (1797, 1, 8, 8) and source.num_classes == 10
    assert 0.0 <= source.train.x.min() and source.train.x.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# partitioners


def _check_cover(parts: list[np.ndarray], n: int, min_size: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and covering
    assert min(len(p) for p in parts) >= min_size


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(PARTITIONERS)), clients=st.integers(1, 25),
       extra=st.integers(0, 400), alpha=st.floats(0.05, 5.0), seed=st.integers(0, 2**16))
def test_partitions_are_disjoint_covering_and_never_tiny(kind: str, clients: int, extra: int,
                                                         alpha: float, seed: int) -> None:
    n = clients * MIN_CLIENT_SAMPLES + extra
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    groups = rng.integers(0, 7, n)
    parts = partition(kind, labels, groups, clients, alpha, rng)
    assert len(parts) == clients
    _check_cover(parts, n, MIN_CLIENT_SAMPLES)


def _label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean per-client entropy of the label distribution (nats)."""
    out = []
    for p in parts:
        freq = np.bincount(labels[p], minlength=10) / len(p)
        out.append(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    return float(np.mean(out))


def test_dirichlet_skews_labels_and_iid_does_not() -> None:
    labels = np.arange(5000) % 10
    rng = np.random.default_rng(0)
    iid = partition("iid", labels, None, 20, 0.5, rng)
    skewed = partition("dirichlet", labels, None, 20, 0.1, rng)
    assert _label_entropy(labels, iid) > 2.2  # ln 10 = 2.30
    assert _label_entropy(labels, skewed) < 1.2


def test_quantity_skew_sizes_follow_a_power_law() -> None:
    labels = np.arange(5000) % 10
    parts = partition("quantity", labels, None, 10, 1.0, np.random.default_rng(0))
    sizes = sorted((len(p) for p in parts), reverse=True)
    assert sizes[0] > 5 * sizes[-1]
    # size - min_size is proportional to rank^-1
    extra = np.array(sizes) - MIN_CLIENT_SAMPLES
    assert extra[0] / extra[1] == pytest.approx(2.0, rel=0.02)
    assert _label_entropy(labels, parts) > 2.2  # labels stay IID


def test_by_group_keeps_each_group_in_one_client() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, 3000)
    labels = rng.integers(0, 6, 3000)
    parts = partition("by_group", labels, groups, 7, 0.5, rng)
    owner = {}
    for c, p in enumerate(parts):
        for g in np.unique(groups[p]):
            assert owner.setdefault(int(g), c) == c
    assert len(owner) == 30
    # more clients than groups: each client holds windows of a single group
    parts = partition("by_group", labels, groups, 45, 0.5, rng)
    _check_cover(parts, 3000, MIN_CLIENT_SAMPLES)
    assert all(len(np.unique(groups[p])) == 1 for p in parts)


def test_partition_errors() -> None:
    labels = np.zeros(50, dtype=np.int64)
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="data.partition: by_group needs natural groups"):
        partition("by_group", labels, None, 2, 0.5, rng)
    with pytest.raises(DataError, match="data.clients: 50 training samples cannot give 6"):
        partition("iid", labels, None, 6, 0.5, rng)
    with pytest.raises(DataError, match="data.partition: unknown 'zipf'"):
        partition("zipf", labels, None, 2, 0.5, rng)


# ---------------------------------------------------------------------------------------------
# load_federated


def _ids_npz(path: Path, n: int = 400) -> Path:
    """An npz whose channel 0 carries each sample's id, to trace samples through the split."""
    x = np.random.default_rng(0).normal(size=(n, 2, 4))
    x[:, 0, :] = np.arange(n)[:, None]
    np.savez(path, X=x, y=np.arange(n) % 5, groups=np.arange(n) % 8)
    return path


def _ids(data: Dataset, fed: FederatedData) -> set[int]:
    assert fed.channel_mean is not None and fed.channel_std is not None
    raw = data.x[:, 0, 0] * fed.channel_std[0] + fed.channel_mean[0]
    return set(torch.round(raw).long().tolist())


@pytest.mark.parametrize("kind", sorted(PARTITIONERS))
def test_federated_splits_are_disjoint_and_cover(tmp_path: Path, kind: str) -> None:
    cfg = DataConfig(dataset="npz", path=_ids_npz(tmp_path / "ids.npz"), partition=kind,
                     proxy_fraction=0.05, test_fraction=0.2, client_test_fraction=0.2)
    fed = load_federated(cfg, 6, seed=2)
    assert fed.num_clients == 6 and fed.input_shape == (2, 4) and fed.num_classes == 5
    test, proxy = _ids(fed.test, fed), _ids(fed.proxy, fed)
    assert len(test) == 80 and len(proxy) == 20
    seen = test | proxy
    for client in fed.clients:
        assert isinstance(client, ClientData)
        assert len(client.test) >= 1 and len(client.train) >= len(client.test)
        ids = _ids(client.train, fed) | _ids(client.test, fed)
        assert not ids & seen
        seen |= ids
    assert seen == set(range(400))


def test_federated_is_deterministic_and_standardised() -> None:
    cfg = DataConfig(windows=1200, subjects=30)
    a, b = load_federated(cfg, 5, seed=1), load_federated(cfg, 5, seed=1)
    for ca, cb in zip(a.clients, b.clients):
        assert torch.equal(ca.train.x, cb.train.x) and torch.equal(ca.test.y, cb.test.y)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.proxy.y, b.proxy.y)
    c = load_federated(cfg, 5, seed=2)
    assert not torch.equal(a.test.x, c.test.x)
    pooled = torch.cat([cl.train.x for cl in a.clients])
    assert torch.allclose(pooled.mean((0, 2)), torch.zeros(9), atol=1e-4)
    assert torch.allclose(pooled.std((0, 2)), torch.ones(9), atol=1e-3)
    assert a.class_names == list(synthetic_har.ACTIVITIES) and a.input_shape == (9, 128)


def test_federated_by_subject_is_non_iid() -> None:
    fed = load_federated(DataConfig(windows=3000, subjects=30), 7, seed=1)
    subjects = [set(c.train.groups.tolist()) for c in fed.clients if c.train.groups is not None]
    assert len(subjects) == 7 and all(len(s) == 3 for s in subjects)  # 21 training subjects
    held = set(synthetic_har.split_subjects(30, 1).tolist())
    assert len(held) == 9 and set().union(*subjects) == set(range(30)) - held


def test_synthetic_har_tests_on_people_who_never_train() -> None:
    fed = load_federated(DataConfig(windows=3000, subjects=30), 5, seed=2)
    train = set().union(*(set(c.train.groups.tolist()) for c in fed.clients))
    assert fed.test.groups is not None and len(fed.test) > 700
    assert train.isdisjoint(fed.test.groups.tolist())
    assert fed.public is None  # no warm start asked for


def test_pretrain_brings_public_data_from_another_population() -> None:
    init = InitConfig(method="pretrain", public_windows=600, public_subjects=6)
    fed = load_federated(DataConfig(windows=1200, subjects=10), 3, seed=2, init=init)
    assert fed.public is not None and len(fed.public) == 600
    plain = load_federated(DataConfig(windows=1200, subjects=10), 3, seed=2)
    assert all(torch.equal(a.train.x, b.train.x) for a, b in zip(fed.clients, plain.clients))


def test_pretrain_holds_out_public_subjects_of_a_real_dataset(tmp_path: Path) -> None:
    _write_uci(tmp_path, {"train": 90, "test": 12})
    cfg = DataConfig(dataset="uci_har", path=tmp_path, partition="iid", proxy_fraction=0.1)
    init = InitConfig(method="pretrain", public_fraction=0.34)
    fed = load_federated(cfg, 2, seed=1, init=init)
    assert fed.public is not None and fed.public.groups is not None
    public = set(fed.public.groups.tolist())
    assert len(public) == 1  # one of the three subjects
    for client in fed.clients:
        assert public.isdisjoint(client.train.groups.tolist())


def test_federated_uses_a_shipped_test_split(tmp_path: Path) -> None:
    _write_uci(tmp_path, {"train": 90, "test": 12})
    cfg = DataConfig(dataset="uci_har", path=tmp_path, partition="by_group", proxy_fraction=0.1)
    fed = load_federated(cfg, 3, seed=0)
    assert len(fed.test) == 12 and len(fed.proxy) == 9
    assert sum(len(c.train) + len(c.test) for c in fed.clients) == 81
    assert fed.test.groups is not None and set(fed.test.groups.tolist()) == {20, 21, 22}


def test_federated_digits_and_errors(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    fed = load_federated(DataConfig(dataset="digits", partition="dirichlet", alpha=0.3), 8, 0)
    assert fed.input_shape == (1, 8, 8) and fed.num_classes == 10
    with pytest.raises(DataError, match="by_group needs natural groups"):
        load_federated(DataConfig(dataset="digits"), 8, 0)
    cfg = replace(DataConfig(dataset="npz"), path=tmp_path / "absent.npz")
    with pytest.raises(DataError, match=r"absent\.npz: file not found"):
        load_federated(cfg, 2, 0)


def test_dataset_record_validates() -> None:
    with pytest.raises(ValueError, match="float32 x and int64 y"):
        Dataset(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x has 3 rows"):
        Dataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    empty = Dataset.empty((9, 128))
    assert len(empty) == 0 and empty.input_shape == (9, 128)


# ---------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("name,dataset,model", [
    ("har-uci", "uci_har", "har_cnn"),
    ("digits", "digits", "small_cnn"),
    ("cifar10", "cifar10", "mobilenet_v2"),
])
def test_recipes_load_and_name_their_data(name: str, dataset: str, model: str) -> None:
    from ftte_cli.config.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / f"{name}.yaml")
    assert recipe.data.dataset == dataset and recipe.model.name == model
    if recipe.data.path is not None:  # real datasets are not shipped: the error names the folder
        assert recipe.data.path.is_absolute()
        if not recipe.data.path.exists():
            with pytest.raises(DataError, match=str(recipe.data.path.name)):
                load_federated(recipe.data, 4, recipe.seed)
