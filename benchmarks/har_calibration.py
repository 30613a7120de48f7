"""Calibration of the synthetic HAR generator against what UCI HAR is known to give.

Prints, on subjects never seen in training (the generator's 30% test subjects):
- the centralised ceiling: har_cnn trained on all training subjects (SGD, momentum 0.9);
- a linear probe on a random frozen backbone (standardised pooled features, L-BFGS);
- a linear probe on a backbone warm-started on the public `lab` population (`init: pretrain`,
  the same data and procedure as `ftte` uses; its statistics are the training subjects' own);
- the warm-started model's accuracy before any federated training.

    python benchmarks/har_calibration.py [--windows 10000] [--subjects 30] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor, nn

from ftte_cli.config.recipe import DataConfig, InitConfig, ModelConfig
from ftte_cli.engine.data import load_federated, synthetic_har
from ftte_cli.engine.data.dataset import Dataset, channel_stats, standardize
from ftte_cli.engine.models import build_model
from ftte_cli.engine.warmstart import pretrain


def _split(windows: int, subjects: int, seed: int) -> tuple[Dataset, Dataset]:
    x, y, g = synthetic_har.generate(windows, subjects, seed)
    held = torch.isin(g, synthetic_har.split_subjects(subjects, seed))
    train, test = Dataset(x[~held], y[~held], g[~held]), Dataset(x[held], y[held], g[held])
    mean, std = channel_stats(train.x)
    return standardize(train, mean, std), standardize(test, mean, std)


def _public(windows: int, subjects: int, seed: int) -> Dataset:
    """The warm start's public data exactly as `ftte` loads it (the `lab` population)."""
    cfg = DataConfig(windows=windows, subjects=subjects, partition="iid")
    fed = load_federated(cfg, 1, seed, InitConfig(method="pretrain"))
    assert fed.public is not None
    return fed.public


def _fit(model: nn.Module, data: Dataset, epochs: int, lr: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def _accuracy(model: nn.Module, data: Dataset) -> float:
    return float((model(data.x).argmax(1) == data.y).float().mean())


@torch.no_grad()
def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.pool(model.features(x)).flatten(1)  # type: ignore[operator]


def _probe(model: nn.Module, train: Dataset, test: Dataset, samples: int = 2000) -> float:
    """Linear head on standardised pooled features, fitted by L-BFGS: what the backbone allows."""
    f_train, f_test = _features(model, train.x[:samples]), _features(model, test.x)
    mean, std = f_train.mean(0), f_train.std(0).clamp(min=1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    w = torch.zeros(f_train.shape[1], 6, requires_grad=True)
    b = torch.zeros(6, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w, b], max_iter=200, history_size=20)
    y = train.y[:samples]

    def closure() -> Tensor:
        lbfgs.zero_grad()
        loss = nn.functional.cross_entropy(f_train @ w + b, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        return float(((f_test @ w + b).argmax(1) == test.y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=10000)
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = _split(args.windows, args.subjects, args.seed)
    rows = {}

    torch.manual_seed(args.seed)
    random = build_model(ModelConfig("har_cnn"), (9, 128), 6)
    rows["random backbone, linear probe"] = _probe(random, train, test)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    central = build_model(ModelConfig("har_cnn"), (9, 128), 6)
    _fit(central, train, args.epochs, 0.05, args.seed)
    rows["centralised har_cnn (ceiling)"] = _accuracy(central, test)
    central_s = time.perf_counter() - start

    torch.manual_seed(args.seed)
    warm = build_model(ModelConfig("har_cnn"), (9, 128), 6)
    pretrain(warm, _public(args.windows, args.subjects, args.seed), InitConfig(), args.seed)
    rows["lab-pretrained model, no federation"] = _accuracy(warm, test)
    rows["lab-pretrained backbone, linear probe"] = _probe(warm, train, test)
    if args.format == "json":
        print(json.dumps({"accuracy_unseen_subjects": rows, "central_seconds": central_s}))
        return
    print(f"{'synthetic HAR, unseen test subjects':42s} accuracy")
    for name, acc in rows.items():
        print(f"{name:42s} {acc:.3f}")
    print(f"(train {len(train)} windows, test {len(test)}, centralised training {central_s:.0f} s)")


if __name__ == "__main__":
    main()
