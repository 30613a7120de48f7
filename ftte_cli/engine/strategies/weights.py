"""Update weights of FTTE.md sections 4 and 5: staleness forms, the variance factor, sample shares.

Every function is pure (numbers in, numbers out) so the formulas are tested against hand-computed
values. The combined FTTE weight is alpha_i = (n_i / n_mean) * s_age(tau_i) * s_var(v_i); FedBuff
weighs by s(tau_i) alone (times n_i / n_mean when asked); FedAsync mixes at alpha * s(tau).
"""

from __future__ import annotations

from typing import Callable, List, Sequence

from ftte_cli.config.recipe import StalenessConfig

StalenessFn = Callable[[int], float]


def polynomial(tau: int, a: float = 0.5) -> float:
    """s(tau) = (1 + tau)^(-a); a = 0.5 is FedBuff's 1/sqrt(1 + tau)."""
    return float((1.0 + tau) ** (-a))


def constant(tau: int) -> float:
    """s(tau) = 1: staleness ignored."""
    return 1.0


def hinge(tau: int, a: float = 10.0, b: float = 4.0) -> float:
    """FedAsync's hinge: 1 while tau <= b, then 1 / (a * (tau - b) + 1)."""
    if tau <= b:
        return 1.0
    return 1.0 / (a * (tau - b) + 1.0)


def staleness_fn(cfg: StalenessConfig) -> StalenessFn:
    """The s_age function a recipe names (kind, a, b; a left out: the form's default)."""
    a = cfg.exponent
    if cfg.kind == "polynomial":
        return lambda tau: polynomial(tau, a)
    if cfg.kind == "constant":
        return constant
    if cfg.kind == "hinge":
        return lambda tau: hinge(tau, a, cfg.b)
    raise ValueError(f"unknown staleness form {cfg.kind!r}")


def sample_shares(num_samples: Sequence[int]) -> List[float]:
    """n_i / n_mean over the given updates (all 1.0 when every n_i is 0)."""
    mean = sum(num_samples) / len(num_samples) if num_samples else 0.0
    if mean <= 0:
        return [1.0 for _ in num_samples]
    return [n / mean for n in num_samples]


def variance_factors(variances: Sequence[float], beta: float) -> List[float]:
    """s_var(v_i) = 1 / (1 + beta * v_i / v_mean), v_mean over the buffer; 1.0 when v_mean is 0."""
    mean = sum(variances) / len(variances) if variances else 0.0
    if beta == 0 or mean <= 0:
        return [1.0 for _ in variances]
    return [1.0 / (1.0 + beta * v / mean) for v in variances]


def ftte_weights(num_samples: Sequence[int], staleness: Sequence[int], variances: Sequence[float],
                 s_age: StalenessFn, beta: float) -> List[float]:
    """alpha_i = (n_i / n_mean) * s_age(tau_i) * s_var(v_i); beta = 0 gives FedBuff's weight."""
    shares = sample_shares(num_samples)
    factors = variance_factors(variances, beta)
    return [sh * s_age(tau) * f for sh, tau, f in zip(shares, staleness, factors)]


def fedbuff_weights(num_samples: Sequence[int], staleness: Sequence[int], s: StalenessFn,
                    sample_weights: bool = False) -> List[float]:
    """FedBuff (Nguyen et al. 2022, Alg. 1): s(tau_i), times n_i / n_mean when sample_weights."""
    shares = sample_shares(num_samples) if sample_weights else [1.0 for _ in num_samples]
    return [sh * s(tau) for sh, tau in zip(shares, staleness)]


def fedasync_rate(alpha: float, tau: int, s: StalenessFn) -> float:
    """FedAsync (Xie et al. 2019): the mixing rate alpha_t = alpha * s(tau)."""
    return alpha * s(tau)
