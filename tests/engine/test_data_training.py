"""engine/data as training sees it, end to end: a CNN learns synthetic HAR where a linear model
cannot, and the device path imports the data and models with torch alone (a fresh interpreter).
The loaders, partitioners and federated split are checked in test_data.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ftte_cli.config.recipe import ModelConfig
from ftte_cli.engine.data import Dataset, synthetic_har
from ftte_cli.engine.data.dataset import channel_stats, standardize
from ftte_cli.engine.models import build_model

pytestmark = pytest.mark.slow


def _split(seed: int) -> tuple[Dataset, Dataset]:
    """Training subjects and the unseen test subjects, as UCI HAR splits them."""
    x, y, g = synthetic_har.generate(10_000, 30, seed=seed)
    held = torch.isin(g, synthetic_har.split_subjects(30, seed))
    assert 0.2 < float(held.float().mean()) < 0.4  # about 9 of 30 people
    train, test = Dataset(x[~held], y[~held]), Dataset(x[held], y[held])
    mean, std = channel_stats(train.x)
    return standardize(train, mean, std), standardize(test, mean, std)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def test_har_cnn_learns_synthetic_har_and_a_linear_model_does_not() -> None:
    """On unseen people a CNN reaches UCI HAR's published range; a linear model cannot."""
    train, test = _split(seed=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="har_cnn"), (9, 128), 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):  # docs/synthetic_har.md: about 0.9 on unseen subjects
        for idx in torch.randperm(len(train)).split(64):
            loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        cnn = _accuracy(model(test.x), test.y)

    # multinomial logistic regression on the raw flattened window (L-BFGS, lightly regularised)
    x, y = train.x[:4000].flatten(1), train.y[:4000]
    w = torch.zeros(x.shape[1], 6, requires_grad=True)
    b = torch.zeros(6, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w, b], max_iter=60, history_size=10)

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        linear = _accuracy(test.x.flatten(1) @ w + b, test.y)
    assert 0.85 <= cnn <= 0.97, f"har_cnn test accuracy {cnn:.3f}"
    assert linear < 0.7, f"linear test accuracy {linear:.3f}"


def test_device_path_imports_without_numpy() -> None:
    """The agent imports synthetic_har, the data records and the models with torch alone."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "from ftte_cli.engine.data import Dataset, synthetic_har\n"
        "import ftte_cli.engine.models\n"
        "x, y, g = synthetic_har.generate(12, 3, 0)\n"
        "print(len(Dataset(x, y, g).subset(y[:5])))\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "bad = top & {'yaml', 'rich', 'typer', 'paramiko'}\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "5"
