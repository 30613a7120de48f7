"""Registered models: a 1-D CNN for HAR, a small 2-D CNN, and a MobileNetV2-style network.

Every model is buffer-free (GroupNorm, never BatchNorm), so its state is exactly its parameters,
and registers its modules in forward order with the classifier head last: `trainable_layers` and
`head_prefix` rely on both. Device path: torch + stdlib only, Python 3.9.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ftte_cli.errors import ConfigError

if TYPE_CHECKING:
    from ftte_cli.config.recipe import ModelConfig

Builder = Callable[[float, Tuple[int, ...], int], nn.Module]


def _divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never below it (MobileNet rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    # never round down by more than 10%: keeps narrow widths honest
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups; gcd keeps the group count a divisor of the channels."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


# ---------------------------------------------------------------------------------------------
# har_cnn: 1-D CNN over (channels=9, time=128) windows


class FeaturesPoolHead(nn.Module):
    """features (a Sequential of per-sample blocks) -> global pool -> linear head.

    `forward(x, start, stop)` lets the client run a frozen prefix of `features` on its own
    (in micro-batches, without autograd) and the rest on the whole batch.
    """

    features: nn.Sequential
    pool: nn.Module
    head: nn.Linear

    def forward(self, x: Tensor, start: int = 0, stop: Optional[int] = None) -> Tensor:
        """features[start:stop] only when `stop` is given; else from block `start` to the logits."""
        whole = start == 0 and stop is None  # slicing builds a new Sequential: skip it per step
        x = self.features(x) if whole else self.features[start:stop](x)
        if stop is not None:
            return x
        return self.head(self.pool(x).flatten(1))  # (B, C) -> (B, num_classes)


class ConvBlock1d(nn.Module):
    """Conv1d -> GroupNorm -> ReLU; no conv bias, the norm's shift plays that role."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
        self.norm = _norm(c_out)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))  # (B, c_in, T) -> (B, c_out, T / stride)


class HarCNN(FeaturesPoolHead):
    """Four conv blocks, global average pooling over time, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (_divisible(c * width) for c in (32, 64, 128))
        self.features = nn.Sequential(
            ConvBlock1d(in_channels, c1, 5, 2),  # (B, 9, 128) -> (B, c1, 64)
            ConvBlock1d(c1, c2, 5, 2),  # -> (B, c2, 32)
            ConvBlock1d(c2, c3, 3, 2),  # -> (B, c3, 16)
            ConvBlock1d(c3, c3, 3, 1),  # -> (B, c3, 16)
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(c3, num_classes)


# ---------------------------------------------------------------------------------------------
# small_cnn: 2-D CNN for small images (1x8x8 digits, 3x32x32 CIFAR)


class ConvBlock2d(nn.Module):
    """Conv2d -> GroupNorm -> ReLU6; `groups=c_in` makes it depthwise."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.norm = _norm(c_out)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)


class SmallCNN(FeaturesPoolHead):
    """Three conv blocks (the last two stride 2), global average pooling, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (_divisible(c * width) for c in (16, 32, 64))
        self.features = nn.Sequential(
            ConvBlock2d(in_channels, c1, 3, 1),  # (B, C, H, W) -> (B, c1, H, W)
            ConvBlock2d(c1, c2, 3, 2),  # -> (B, c2, H/2, W/2)
            ConvBlock2d(c2, c3, 3, 2),  # -> (B, c3, H/4, W/4)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c3, num_classes)


# ---------------------------------------------------------------------------------------------
# mobilenet_v2: inverted residual blocks with depthwise convs, width multiplier, 32x32 inputs


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project; identity shortcut when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: List[nn.Module] = []
        if expand != 1:
            layers.append(ConvBlock2d(c_in, hidden, 1))  # (B, c_in, H, W) -> (B, hidden, H, W)
        layers += [
            ConvBlock2d(hidden, hidden, 3, stride, groups=hidden),  # -> (B, hidden, H/s, W/s)
            ConvBlock2d(hidden, c_out, 1, act=False),  # -> (B, c_out, H/s, W/s), linear
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


# (expansion t, output channels c, repeats n, first stride s): MobileNetV2's table, shortened for
# 32x32 inputs and small devices (CIFAR-style stride-1 stem, fewer repeats, 640-wide last conv).
MOBILENET_V2_STAGES: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),  # 32x32
    (6, 24, 2, 1),  # 32x32
    (6, 32, 2, 2),  # 16x16
    (6, 64, 2, 2),  # 8x8
    (6, 96, 1, 1),  # 8x8
    (6, 160, 2, 2),  # 4x4
    (6, 320, 1, 1),  # 4x4
)


class MobileNetV2(FeaturesPoolHead):
    """Stem conv, inverted residual stages, 1x1 conv, global pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0,
                 stages: Sequence[Tuple[int, int, int, int]] = MOBILENET_V2_STAGES,
                 last_channels: int = 640) -> None:
        super().__init__()
        c = _divisible(32 * width)
        # (B, 3, 32, 32) -> (B, c, 32, 32)
        layers: List[nn.Module] = [ConvBlock2d(in_channels, c, 3, 1)]
        for expand, channels, repeats, stride in stages:
            c_out = _divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(c, c_out, stride if i == 0 else 1, expand))
                c = c_out
        last = _divisible(last_channels * max(1.0, width))
        layers.append(ConvBlock2d(c, last, 1))  # (B, c, 4, 4) -> (B, last, 4, 4)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(last, num_classes)



# ---------------------------------------------------------------------------------------------
# registry and helpers


def _har_cnn(width: float, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    return HarCNN(input_shape[0], num_classes, width)


def _small_cnn(width: float, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    return SmallCNN(input_shape[0], num_classes, width)


def _mobilenet_v2(width: float, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    return MobileNetV2(input_shape[0], num_classes, width)


MODELS: Dict[str, Builder] = {
    "har_cnn": _har_cnn,
    "small_cnn": _small_cnn,
    "mobilenet_v2": _mobilenet_v2,
}

# The input rank each model expects (without the batch dimension), for a clear error up front.
_INPUT_RANK: Dict[str, int] = {"har_cnn": 2, "small_cnn": 3, "mobilenet_v2": 3}


def build_model(cfg: ModelConfig, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a registered model for inputs of `input_shape` (no batch dim) and `num_classes`."""
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {cfg.name!r} (known: {', '.join(MODELS)})")
    rank = _INPUT_RANK[cfg.name]
    if len(input_shape) != rank:
        raise ConfigError(f"model.name: {cfg.name} expects inputs of rank {rank} "
                          f"(channels, ...), the dataset gives shape {tuple(input_shape)}")
    return MODELS[cfg.name](cfg.width, tuple(input_shape), num_classes)


def trainable_layers(model: nn.Module) -> List[str]:
    """Names of the modules that directly own parameters, in forward (= registration) order."""
    return [name for name, module in model.named_modules()
            if next(module.parameters(recurse=False), None) is not None]


def head_prefix(model: nn.Module) -> str:
    """The classifier head: the last module that directly owns parameters."""
    layers = trainable_layers(model)
    if not layers:
        raise ValueError("model has no parameters")
    return layers[-1]


# Modules that treat every sample of a batch on its own (no batch statistics, no cross-sample ops)
_PER_SAMPLE = (nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.Identity, nn.Sequential,
               ConvBlock1d, ConvBlock2d, InvertedResidual)


def feature_block(name: str) -> Optional[int]:
    """i for a layer or parameter of `features[i]` ("features.3.conv.weight"), else None."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "features" and len(parts) > 1 and parts[1].isdigit() \
        else None


def frozen_prefix(model: nn.Module, trainable: Iterable[str]) -> int:
    """How many leading blocks of `model.features` hold no trainable parameter and are all
    per-sample: the prefix a client may run without autograd, in micro-batches (0: none)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return 0
    count = len(features)
    for name in trainable:
        block = feature_block(name)
        if block is not None:
            count = min(count, block)
        elif name.split(".")[0] == "features":
            return 0
    for i in range(count):
        if not all(isinstance(m, _PER_SAMPLE) for m in features[i].modules()):
            return i
    return count


def param_count(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def output_shape(model: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Shape of one sample's output (a quick sanity check for builders)."""
    return tuple(model(torch.zeros((1, *input_shape), dtype=torch.float32)).shape[1:])
