"""Dataset loaders: synthetic HAR, UCI HAR folders, generic .npz, sklearn digits, CIFAR-10 binary.

Each loader returns a `Source`: the samples clients, proxy and test are drawn from, plus the
dataset's own test split when it has one (UCI HAR, CIFAR-10, an .npz with X_test/y_test).
Missing or malformed files raise `DataError` with one line naming the file. numpy is allowed
here (server side only); `np.load` always runs with allow_pickle=False.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ftte_cli.engine.data import synthetic_har
from ftte_cli.engine.data.dataset import Dataset
from ftte_cli.errors import DataError

UCI_SIGNALS = ("body_acc", "body_gyro", "total_acc")  # x, y, z each: the 9 UCI HAR channels
UCI_WINDOW = 128
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + RGB planes


@dataclass(frozen=True, eq=False)
class Source:
    """A loaded dataset before it is split between clients."""

    name: str
    train: Dataset  # pool for clients, proxy and (without `test`) the global test split
    test: Optional[Dataset]  # the dataset's own test split, if it ships one
    num_classes: int
    class_names: List[str]


def _dataset(x: np.ndarray, y: np.ndarray, groups: Optional[np.ndarray] = None) -> Dataset:
    g = None if groups is None else torch.from_numpy(np.ascontiguousarray(groups, dtype=np.int64))
    return Dataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)), g)


def _labels(y: np.ndarray, where: object, num_classes: Optional[int] = None) -> np.ndarray:
    """Integer class labels >= 0 (and < num_classes when given), as int64."""
    if y.ndim != 1 or y.size == 0:
        raise DataError(f"{where}: labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{where}: labels must be integers")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise DataError(f"{where}: labels must be in {bound}, found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# synthetic HAR


def load_synthetic_har(windows: int, subjects: int, seed: int) -> Source:
    """Generated UCI-HAR-like windows; groups are the simulated subjects.

    As in UCI HAR, the test split holds its own subjects (`synthetic_har.split_subjects`: 30%),
    so test accuracy is accuracy on people who never trained.
    """
    x, y, groups = synthetic_har.generate(windows, subjects, seed)
    held = torch.isin(groups, synthetic_har.split_subjects(subjects, seed))
    test = Dataset(x[held], y[held], groups[held]) if bool(held.any()) else None
    train = Dataset(x[~held], y[~held], groups[~held])
    return Source("synthetic_har", train, test, len(synthetic_har.ACTIVITIES),
                  list(synthetic_har.ACTIVITIES))


def synthetic_har_public(windows: int, subjects: int, seed: int) -> Dataset:
    """The server's public data for synthetic HAR: the `lab` population, other people."""
    x, y, groups = synthetic_har.generate(windows, subjects, seed, population="lab")
    return Dataset(x, y, groups)


# ---------------------------------------------------------------------------------------------
# UCI HAR Dataset folder


def _read_table(path: Path, columns: Optional[int]) -> np.ndarray:
    """A whitespace-separated numeric text file as a 2-D float array."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: malformed numbers ({str(err).splitlines()[0]})") from None
    if table.shape[0] == 0:
        raise DataError(f"{path}: file is empty")
    if columns is not None and table.shape[1] != columns:
        raise DataError(f"{path}: expected {columns} values per line, found {table.shape[1]}")
    if not np.all(np.isfinite(table)):
        raise DataError(f"{path}: contains NaN or infinite values")
    return table


def _uci_split(root: Path, split: str) -> Dataset:
    """One split (train or test) of the UCI HAR layout: 9 inertial signals, labels, subjects."""
    folder = root / split
    paths = [folder / "Inertial Signals" / f"{sig}_{axis}_{split}.txt"
             for sig in UCI_SIGNALS for axis in "xyz"]
    signals = [_read_table(p, UCI_WINDOW) for p in paths]
    y_path, s_path = folder / f"y_{split}.txt", folder / f"subject_{split}.txt"
    y = _labels(_read_table(y_path, 1)[:, 0], y_path) - 1  # UCI labels are 1..6
    if y.min() < 0 or y.max() >= len(synthetic_har.ACTIVITIES):
        raise DataError(f"{y_path}: labels must be in 1..6")
    subjects = _read_table(s_path, 1)[:, 0].astype(np.int64)
    for path, rows in zip(paths + [s_path], [len(t) for t in signals] + [len(subjects)]):
        if rows != len(y):
            raise DataError(f"{path}: {rows} rows, but {y_path.name} has {len(y)} labels")
    x = np.stack(signals, axis=1)  # (N, 9, 128), channels in synthetic_har.CHANNELS order
    return _dataset(x, y, subjects)


def _uci_class_names(root: Path) -> List[str]:
    path = root / "activity_labels.txt"
    if not path.is_file():
        return list(synthetic_har.ACTIVITIES)
    names = [line.split()[-1].lower() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != len(synthetic_har.ACTIVITIES):
        raise DataError(f"{path}: expected 6 activities, found {len(names)}")
    return names


def load_uci_har(path: Path) -> Source:
    """The 'UCI HAR Dataset' folder (or its parent): raw inertial windows, groups = subjects."""
    root = path / "UCI HAR Dataset" if (path / "UCI HAR Dataset").is_dir() else path
    if not root.is_dir():
        raise DataError(f"{path}: UCI HAR folder not found")
    return Source("uci_har", _uci_split(root, "train"), _uci_split(root, "test"),
                  len(synthetic_har.ACTIVITIES), _uci_class_names(root))


# ---------------------------------------------------------------------------------------------
# generic .npz


def _npz_array(arrays: Dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{path}: missing array {key!r} (found: {found})")
    return arrays[key]


def _npz_features(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: {key} must be a numeric array of shape (N, ...), got "
                        f"{x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {key} contains NaN or infinite values")
    return x


def _npz_pair(arrays: Dict[str, np.ndarray], xk: str, yk: str, path: Path,
              groups: Optional[np.ndarray]) -> Dataset:
    x = _npz_features(_npz_array(arrays, xk, path), xk, path)
    y = _labels(_npz_array(arrays, yk, path), f"{path}: {yk}")
    if len(y) != len(x):
        raise DataError(f"{path}: {yk} has {len(y)} labels but {xk} has {len(x)} rows")
    if groups is not None and groups.shape != y.shape:
        raise DataError(f"{path}: groups has shape {groups.shape}, expected ({len(y)},)")
    return _dataset(x, y, groups)


def load_npz(path: Path) -> Source:
    """An .npz with X (N, ...), y (N,), optional groups (N,), X_test/y_test, class_names."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({str(err).splitlines()[0]})") from None
    groups = arrays.get("groups")
    if groups is not None:
        groups = _labels(groups, f"{path}: groups")
    train = _npz_pair(arrays, "X", "y", path, groups)
    test = _npz_pair(arrays, "X_test", "y_test", path, None) if "X_test" in arrays else None
    if test is not None and test.input_shape != train.input_shape:
        raise DataError(f"{path}: X_test samples have shape {test.input_shape}, X has "
                        f"{train.input_shape}")
    top = int(train.y.max()) if test is None else max(int(train.y.max()), int(test.y.max()))
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else []
    num_classes = max(top + 1, len(names))
    names = names or [str(c) for c in range(num_classes)]
    return Source(path.stem, train, test, num_classes, names)


# ---------------------------------------------------------------------------------------------
# sklearn digits


def load_digits() -> Source:
    """sklearn's 8x8 handwritten digits (ships with scikit-learn, no download): 1x8x8 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_digits  # type: ignore[import-untyped]
    except ImportError:
        raise DataError("data.dataset: digits needs scikit-learn "
                        "(pip install 'ftte-cli[sklearn]')") from None
    bunch = sk_digits()
    x = bunch.images[:, None, :, :] / 16.0  # (N, 1, 8, 8)
    return Source("digits", _dataset(x, bunch.target), None, 10, [str(d) for d in range(10)])


# ---------------------------------------------------------------------------------------------
# CIFAR-10 binary version


def _cifar_file(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{path}: size {raw.size} bytes is not a whole number of "
                        f"{CIFAR_RECORD}-byte CIFAR-10 records")
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR_CLASSES):
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..9 "
                        "(not the CIFAR-10 binary version?)")
    x = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, labels


def _cifar_names(root: Path) -> List[str]:
    path = root / "batches.meta.txt"
    if not path.is_file():
        return list(CIFAR_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names if len(names) == len(CIFAR_CLASSES) else list(CIFAR_CLASSES)


def load_cifar10(path: Path) -> Source:
    """CIFAR-10 'binary version' folder: data_batch_*.bin for training, test_batch.bin."""
    root = path / "cifar-10-batches-bin" if (path / "cifar-10-batches-bin").is_dir() else path
    if not root.is_dir():
        raise DataError(f"{path}: CIFAR-10 folder not found")
    batches = sorted(root.glob("data_batch_*.bin"))
    if not batches:
        raise DataError(f"{root / 'data_batch_1.bin'}: file not found")
    parts = [_cifar_file(p) for p in batches]
    train = _dataset(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    test = _dataset(*_cifar_file(root / "test_batch.bin"))
    return Source("cifar10", train, test, len(CIFAR_CLASSES), _cifar_names(root))


# ---------------------------------------------------------------------------------------------
# dispatch by recipe name

def _need(path: Optional[Path], dataset: str) -> Path:
    if path is None:
        raise DataError(f"data.path: required for dataset {dataset}")
    return Path(path)


def _synthetic(path: Optional[Path], windows: int, subjects: int, seed: int) -> Source:
    return load_synthetic_har(windows, subjects, seed)


def _uci(path: Optional[Path], windows: int, subjects: int, seed: int) -> Source:
    return load_uci_har(_need(path, "uci_har"))


def _npz(path: Optional[Path], windows: int, subjects: int, seed: int) -> Source:
    return load_npz(_need(path, "npz"))


def _digits(path: Optional[Path], windows: int, subjects: int, seed: int) -> Source:
    return load_digits()


def _cifar(path: Optional[Path], windows: int, subjects: int, seed: int) -> Source:
    return load_cifar10(_need(path, "cifar10"))


# (path, windows, subjects, seed) -> Source, by recipe name (`data.dataset`)
LOADERS: Dict[str, Callable[[Optional[Path], int, int, int], Source]] = {
    "synthetic_har": _synthetic,
    "uci_har": _uci,
    "npz": _npz,
    "digits": _digits,
    "cifar10": _cifar,
}


def load_source(dataset: str, path: Optional[Path], windows: int, subjects: int,
                seed: int) -> Source:
    """Load the dataset a recipe names (`data.dataset`)."""
    if dataset not in LOADERS:
        raise DataError(f"data.dataset: unknown dataset {dataset!r} (known: {', '.join(LOADERS)})")
    return LOADERS[dataset](path, windows, subjects, seed)
