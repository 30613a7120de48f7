"""Training recipes (recipes/*.yaml): data, partition, model, local training, strategy, stop.

Every section is a frozen dataclass; `load_recipe` validates the whole file once and every error
names the file and the dotted key (`recipes/har.yaml: train.batch_size: expected int, got 'x'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from ftte_cli.config.schema import Size, build, load_yaml
from ftte_cli.errors import ConfigError

DATASETS = ("synthetic_har", "uci_har", "npz", "digits", "cifar10")
PARTITIONS = ("iid", "dirichlet", "by_group", "quantity")
STRATEGIES = ("ftte", "fedbuff", "fedasync", "fedavg")
STALENESS_FORMS = ("polynomial", "constant", "hinge")
NORMALIZERS = ("weights", "buffer")
SERVER_OPTIMIZERS = ("none", "momentum", "adam")
AGGREGATORS = ("mean", "trimmed_mean", "median")
NORM_ACTIONS = ("reject", "clip")
PLAN_METHODS = ("contribution", "gradnorm")
INIT_METHODS = ("random", "checkpoint", "pretrain")


def _check(cond: bool, where: str, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}.{key}: {message}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split between clients, the server proxy and the test set."""

    dataset: str = "synthetic_har"  # one of DATASETS
    path: Optional[Path] = None  # folder or file for uci_har, npz, cifar10
    windows: int = 10000  # synthetic_har: number of windows generated
    subjects: int = 30  # synthetic_har: number of simulated people
    partition: str = "by_group"  # one of PARTITIONS
    alpha: float = 0.5  # dirichlet concentration; quantity-skew power-law exponent
    clients: Optional[int] = None  # default: one per device (train) or --clients (simulate)
    proxy_fraction: float = 0.05  # server's labelled proxy split, disjoint from clients and test
    test_fraction: float = 0.2  # global test split
    client_test_fraction: float = 0.2  # each client's own held-out part

    def validate(self, where: str) -> None:
        _check(self.dataset in DATASETS, where, "dataset", f"must be one of {', '.join(DATASETS)}")
        _check(self.partition in PARTITIONS, where, "partition",
               f"must be one of {', '.join(PARTITIONS)}")
        _check(self.dataset in ("synthetic_har", "digits") or self.path is not None, where, "path",
               f"required for dataset {self.dataset}")
        _check(self.windows > 0, where, "windows", "must be > 0")
        _check(self.subjects > 0, where, "subjects", "must be > 0")
        _check(self.alpha > 0, where, "alpha", "must be > 0")
        for key in ("proxy_fraction", "test_fraction", "client_test_fraction"):
            _check(0 <= getattr(self, key) < 1, where, key, "must be in [0, 1)")
        _check(self.clients is None or self.clients > 0, where, "clients", "must be > 0")


@dataclass(frozen=True)
class InitConfig:
    """The model federation starts from (FTTE.md section 5b).

    `random`: seeded by the recipe. `checkpoint`: a safetensors file of the model's parameters.
    `pretrain`: trained on the server's public data before federation (for synthetic_har the
    `lab` population; otherwise `public_fraction` of the training subjects or samples, kept out
    of the federation), computed once and cached, the same for every strategy.
    """

    method: str = "random"  # one of INIT_METHODS
    checkpoint: Optional[Path] = None  # method checkpoint: a .safetensors file
    epochs: int = 3  # pretrain: passes over the public data
    lr: float = 0.003  # pretrain: Adam learning rate (the server can afford a robust optimiser)
    batch_size: int = 64  # pretrain
    public_windows: int = 6000  # synthetic_har: windows drawn from the public population
    public_subjects: int = 20  # synthetic_har: people in the public population
    public_fraction: float = 0.2  # other datasets: share of training subjects/samples held out

    def validate(self, where: str) -> None:
        _check(self.method in INIT_METHODS, where, "method",
               f"must be one of {', '.join(INIT_METHODS)}")
        _check(self.method != "checkpoint" or self.checkpoint is not None, where, "checkpoint",
               "required for method checkpoint")
        for key in ("epochs", "batch_size", "public_windows", "public_subjects"):
            _check(getattr(self, key) > 0, where, key, "must be > 0")
        _check(self.lr > 0, where, "lr", "must be > 0")
        _check(0 < self.public_fraction < 1, where, "public_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """A registered model and its size knobs."""

    name: str = "har_cnn"  # har_cnn | small_cnn | mobilenet_v2
    width: float = 1.0  # width multiplier

    def validate(self, where: str) -> None:
        _check(self.width > 0, where, "width", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Local training on a client (FTTE.md section 3)."""

    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.0  # > 0 costs one optimizer slot per trainable parameter
    max_steps: Optional[int] = None  # Q: cap on local steps per job
    device: str = "cpu"  # cpu | cuda | auto

    def validate(self, where: str) -> None:
        _check(self.epochs > 0, where, "epochs", "must be > 0")
        _check(self.batch_size > 0, where, "batch_size", "must be > 0")
        _check(self.lr > 0, where, "lr", "must be > 0")
        _check(0 <= self.momentum < 1, where, "momentum", "must be in [0, 1)")
        _check(self.max_steps is None or self.max_steps > 0, where, "max_steps", "must be > 0")
        _check(self.device in ("cpu", "cuda", "auto"), where, "device", "must be cpu, cuda or auto")


@dataclass(frozen=True)
class StalenessConfig:
    """s_age(tau): polynomial (1+tau)^-a, constant 1, or hinge(a, b) as in FedAsync.

    `a` left out takes the form's published default: 0.5 for polynomial (FedBuff's
    1/sqrt(1+tau)), 10 for hinge (Xie et al. 2019, with b = 4).
    """

    kind: str = "polynomial"
    a: Optional[float] = None  # None: polynomial 0.5, hinge 10
    b: float = 4.0

    @property
    def exponent(self) -> float:
        """`a` as given, else the form's published default."""
        if self.a is not None:
            return self.a
        return 10.0 if self.kind == "hinge" else 0.5

    def validate(self, where: str) -> None:
        _check(self.kind in STALENESS_FORMS, where, "kind",
               f"must be one of {', '.join(STALENESS_FORMS)}")
        _check(self.a is None or self.a >= 0, where, "a", "must be >= 0")
        _check(self.b >= 0, where, "b", "must be >= 0")


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """The step the server takes with the aggregated pseudo-gradient, for every strategy.

    none: w + eta_g * d (the plain step). momentum (FedAvgM, Hsu et al. 2019): m = momentum * m
    + d, w + lr * m. adam (FedAdam, Reddi et al. 2021): m = beta1 m + (1 - beta1) d, v = beta2 v
    + (1 - beta2) d^2, w + lr * m / (sqrt(v) + tau). `lr` left out: strategy.server_lr for none
    and momentum, 0.01 for adam (an adaptive step of 1 per coordinate would diverge).
    """

    kind: str = "none"  # one of SERVER_OPTIMIZERS
    lr: Optional[float] = None
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def step_size(self, server_lr: float) -> float:
        """The learning rate the optimiser steps with."""
        if self.lr is not None:
            return self.lr
        return 0.01 if self.kind == "adam" else server_lr

    def validate(self, where: str) -> None:
        _check(self.kind in SERVER_OPTIMIZERS, where, "kind",
               f"must be one of {', '.join(SERVER_OPTIMIZERS)}")
        _check(self.lr is None or self.lr > 0, where, "lr", "must be > 0")
        for key in ("momentum", "beta1", "beta2"):
            _check(0 <= getattr(self, key) < 1, where, key, "must be in [0, 1)")
        _check(self.tau > 0, where, "tau", "must be > 0")


@dataclass(frozen=True)
class GuardConfig:
    """What keeps one hostile or broken update from ruining the model (README "Reliability").

    An update whose L2 norm exceeds `norm_bound` x the running median of the last `norm_window`
    accepted update norms is rejected or clipped (`norm_action`); before `norm_warmup` updates
    were accepted the reference is the norm of the current trainable subset w* itself.
    """

    norm_bound: Optional[float] = 10.0  # None: no norm bound
    norm_action: str = "reject"  # reject | clip (scale the delta down to the bound)
    norm_window: int = 50  # accepted update norms the running median is taken over
    norm_warmup: int = 3  # accepted updates before the median replaces ||w*||
    norm_floor: float = 0.1  # refusal needs norm over norm_bound x this x ||w*|| too (non-IID)
    aggregator: str = "mean"  # mean (weighted) | trimmed_mean | median (coordinate-wise)
    trim_fraction: float = 0.1  # trimmed_mean: fraction dropped at each end per coordinate
    diverge_factor: Optional[float] = 10.0  # loss over this x the last good loss = diverged

    def validate(self, where: str) -> None:
        _check(self.norm_bound is None or self.norm_bound > 0, where, "norm_bound",
               "must be > 0 (or null for no bound)")
        _check(self.norm_action in NORM_ACTIONS, where, "norm_action",
               f"must be one of {', '.join(NORM_ACTIONS)}")
        _check(self.norm_window > 0, where, "norm_window", "must be > 0")
        _check(self.norm_warmup >= 0, where, "norm_warmup", "must be >= 0")
        _check(self.norm_floor >= 0, where, "norm_floor", "must be >= 0")
        _check(self.aggregator in AGGREGATORS, where, "aggregator",
               f"must be one of {', '.join(AGGREGATORS)}")
        _check(0 <= self.trim_fraction < 0.5, where, "trim_fraction", "must be in [0, 0.5)")
        _check(self.diverge_factor is None or self.diverge_factor > 1, where, "diverge_factor",
               "must be > 1 (or null for no divergence check)")


@dataclass(frozen=True)
class StrategyConfig:
    """Server aggregation; names follow FedBuff/FedScale/NVFlare usage."""

    name: str = "ftte"  # one of STRATEGIES
    buffer_size: int = 10  # K
    max_concurrency: int = 20  # C
    max_staleness: Optional[int] = None  # tau_max; None = no bound
    staleness_weight: StalenessConfig = field(default_factory=StalenessConfig)  # FTTE's s_age
    variance_beta: float = 1.0  # beta of s_var; 0 = FedBuff-style age-only weighting
    server_lr: float = 1.0  # eta_g
    # weights: divide by sum(alpha_i) (FTTE); buffer: by K (FedBuff); None: the strategy's own
    normalizer: Optional[str] = None
    server_optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    # the server step halves every `server_lr_halflife` versions (eta_t = eta * 0.5^(t / h)), for
    # every strategy as server_lr is; 0: constant (FTTE: no better at h 100, 200; synthetic_har.md)
    server_lr_halflife: float = 0.0
    fedbuff_staleness: StalenessConfig = field(default_factory=StalenessConfig)  # s(tau)
    fedbuff_sample_weights: bool = False  # FedBuff: also weight by n_i / n_mean
    fedasync_alpha: float = 0.6
    fedasync_staleness: StalenessConfig = field(default_factory=StalenessConfig)  # s(tau)
    fedavg_clients: Optional[int] = None  # m per round; None = all reachable
    baseline_memory: str = "strict"  # strict: FedAvg leaves out devices that cannot hold full
    # training (FedAvg only: the asynchronous baselines keep every device)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self, where: str) -> None:
        _check(self.name in STRATEGIES, where, "name", f"must be one of {', '.join(STRATEGIES)}")
        _check(self.buffer_size > 0, where, "buffer_size", "must be > 0")
        _check(self.max_concurrency > 0, where, "max_concurrency", "must be > 0")
        _check(self.buffer_size <= self.max_concurrency, where, "buffer_size",
               f"({self.buffer_size}) must not exceed max_concurrency ({self.max_concurrency})")
        _check(self.max_staleness is None or self.max_staleness >= 0, where, "max_staleness",
               "must be >= 0")
        _check(self.variance_beta >= 0, where, "variance_beta", "must be >= 0")
        _check(self.server_lr > 0, where, "server_lr", "must be > 0")
        _check(self.server_lr_halflife >= 0, where, "server_lr_halflife",
               "must be >= 0 (0: no decay)")
        _check(self.normalizer is None or self.normalizer in NORMALIZERS, where, "normalizer",
               f"must be one of {', '.join(NORMALIZERS)}")
        _check(0 < self.fedasync_alpha <= 1, where, "fedasync_alpha", "must be in (0, 1]")
        _check(self.baseline_memory in ("strict", "lenient"), where, "baseline_memory",
               "must be strict or lenient")


@dataclass(frozen=True)
class PlanConfig:
    """Sparse parameter selection (FTTE.md section 2)."""

    memory_budget: Optional[Size] = None  # bytes ("2MB" in YAML); overrides M_min
    method: str = "contribution"  # contribution (needs proxy data) | gradnorm (fallback)
    ratios: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # input-channel ratios per weight
    proxy_steps: int = 10  # fine-tune steps per unit in the contribution analysis
    safety_margin: Size = 4 * 2**20  # bytes ("4MiB"), subtracted from each device's usable memory

    def validate(self, where: str) -> None:
        _check(self.method in PLAN_METHODS, where, "method",
               f"must be one of {', '.join(PLAN_METHODS)}")
        _check(len(self.ratios) > 0 and all(0 < r <= 1 for r in self.ratios), where, "ratios",
               "must be a non-empty list of numbers in (0, 1]")
        _check(self.proxy_steps > 0, where, "proxy_steps", "must be > 0")


@dataclass(frozen=True)
class StopConfig:
    """When a run ends: target accuracy, versions or time (wall for train, virtual for simulate)."""

    target_accuracy: float = 0.9
    max_versions: int = 300
    time_limit: float = 3600.0  # seconds
    eval_every: int = 2  # evaluate the global model every N versions
    # watchdog (ftte train): stop when no version appears for stall_factor x the median time
    # between versions, and never sooner than stall_min seconds; stall_factor null = never
    stall_factor: Optional[float] = 20.0
    stall_min: float = 600.0

    def validate(self, where: str) -> None:
        _check(0 < self.target_accuracy <= 1, where, "target_accuracy", "must be in (0, 1]")
        _check(self.stall_factor is None or self.stall_factor > 1, where, "stall_factor",
               "must be > 1 (or null for no watchdog)")
        _check(self.stall_min > 0, where, "stall_min", "must be > 0")
        _check(self.max_versions > 0, where, "max_versions", "must be > 0")
        _check(self.time_limit > 0, where, "time_limit", "must be > 0")
        _check(self.eval_every > 0, where, "eval_every", "must be > 0")


@dataclass(frozen=True)
class SimConfig:
    """The virtual fleet of `ftte simulate` (FTTE.md section 6) when no profiles are replayed."""

    clients: int = 100
    stragglers: float = 0.0  # fraction p of clients slowed down
    slowdown: tuple[float, ...] = (5.0, 20.0)  # U(lo, hi) factor for stragglers
    # device class -> share of the clients (sim/devices.py DEVICE_CLASSES); None: DEFAULT_MIX
    devices: Optional[dict[str, float]] = None
    # each range below, when given, replaces the classes' figure by U(lo, hi) for every client
    device_gflops: Optional[tuple[float, ...]] = None  # effective GFLOP/s per client
    bandwidth_mbps: Optional[tuple[float, ...]] = None  # megabit/s
    latency_ms: Optional[tuple[float, ...]] = None
    memory_mb: Optional[tuple[float, ...]] = None  # usable training memory M_i
    dropout_rate: float = 0.0  # per job, chance a client goes offline
    return_after: float = 60.0  # mean virtual seconds before a dropped client returns

    def validate(self, where: str) -> None:
        _check(self.clients > 0, where, "clients", "must be > 0")
        _check(0 <= self.stragglers <= 1, where, "stragglers", "must be in [0, 1]")
        for key in ("slowdown", "device_gflops", "bandwidth_mbps", "latency_ms", "memory_mb"):
            pair = getattr(self, key)
            _check(pair is None or (len(pair) == 2 and 0 <= pair[0] <= pair[1]), where, key,
                   "must be [low, high] with 0 <= low <= high")
        _check(self.devices is None or (bool(self.devices) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for v in self.devices.values())), where, "devices",
            "must map device classes to shares > 0")
        _check(0 <= self.dropout_rate < 1, where, "dropout_rate", "must be in [0, 1)")


@dataclass(frozen=True)
class RequireConfig:
    """When a device may take a job: checked by its agent before each one (client/power.py);
    a device that fails a rule waits (not a straggler, not offline) and says why."""

    charging: bool = False  # only on external power (charging, full, or no battery at all)
    battery_min: Optional[float] = None  # lowest battery level, a fraction of full (0.5 = 50%)
    temperature_max_c: Optional[float] = None  # hottest thermal zone (or battery) allowed

    def validate(self, where: str) -> None:
        _check(self.battery_min is None or 0 <= self.battery_min <= 1, where, "battery_min",
               "must be in [0, 1] (a fraction of a full battery)")


@dataclass(frozen=True)
class DevicesConfig:
    """What the recipe asks of the devices themselves."""

    require: RequireConfig = field(default_factory=RequireConfig)
    recheck_s: float = 2.0  # how often a waiting agent reads its power state again

    def validate(self, where: str) -> None:
        _check(self.recheck_s > 0, where, "recheck_s", "must be > 0")


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe; `source` is the file it came from (for messages)."""

    name: str = "recipe"
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    source: Optional[Path] = None

    def with_strategy(self, name: str) -> Recipe:
        """The same recipe under another strategy name (validated)."""
        if name not in STRATEGIES:
            raise ConfigError(f"strategy: unknown {name!r} (known: {', '.join(STRATEGIES)})")
        return replace(self, strategy=replace(self.strategy, name=name))


def load_recipe(path: Union[str, Path]) -> Recipe:
    """Read and validate a recipe file; relative data paths resolve against the recipe's folder.

    `path` may also name a built-in recipe (`har` or `har.yaml`; a local file wins), see
    ftte_cli/builtin.
    """
    from ftte_cli.builtin import RECIPES, resolve  # laptop only: the agent never loads YAML

    path = resolve(RECIPES, path).path
    raw = load_yaml(path)
    if isinstance(raw, dict) and "source" in raw:
        raise ConfigError(f"{path}: source: unknown key")
    if isinstance(raw, dict) and isinstance(raw.get("init"), str):
        raw = {**raw, "init": _init_shorthand(raw["init"])}
    recipe = build(Recipe, raw, f"{path}:")
    data_path = _beside(path, recipe.data.path)
    if data_path is not None:
        _DATA_ORIGINS[data_path] = path
    return replace(recipe, source=path,
                   data=replace(recipe.data, path=data_path),
                   init=replace(recipe.init, checkpoint=_beside(path, recipe.init.checkpoint)))


def _beside(recipe_path: Path, path: Optional[Path]) -> Optional[Path]:
    """A path from the recipe, resolved against the recipe's folder when relative."""
    if path is None or path.is_absolute():
        return path
    return (recipe_path.parent / path).resolve()


def _init_shorthand(value: str) -> dict[str, Any]:
    """`init: pretrain`, `init: random` or `init: path/to/model.safetensors`."""
    if value in INIT_METHODS:
        return {"method": value}
    return {"method": "checkpoint", "checkpoint": value}


# data.path -> the recipe file that named it. A recipe loads without its data (datasets are
# downloaded separately); the loader asks here so a missing path names the recipe and the key.
_DATA_ORIGINS: dict[Path, Path] = {}


def data_path_origin(data_path: Path) -> str:
    """'<recipe file>: data.path' for a path a loaded recipe named, else 'data.path'."""
    origin = _DATA_ORIGINS.get(data_path)
    return f"{origin}: data.path" if origin is not None else "data.path"


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON-able data (for manifests and bundles)."""
    from ftte_cli.rundir.jsonable import to_jsonable

    out = to_jsonable(recipe)
    out.pop("source", None)
    return out


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Inverse of recipe_to_dict (bundles and manifests)."""
    return build(Recipe, data, f"{where}:")
