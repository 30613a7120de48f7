"""Synthetic human-activity windows shaped like UCI HAR: 9 channels x 128 samples at 50 Hz.

A stand-in for UCI HAR that is hard in the ways the real data set is hard (docs/synthetic_har.md
has the model and its calibration):

- People differ. Each simulated subject has their own step frequency and vertical amplitude, a
  personal gait style (perturbed harmonics of each dynamic activity), their own way of sitting and
  standing (torso pitch), a sensor mounting (a rotation of the whole sensor frame: where on the
  waist the phone sits), per-axis gain, per-channel offset (bias) and noise level. The test split
  holds subjects that never train (`split_subjects`), so accuracy measures generalisation to new
  people, as UCI HAR's 21/9 subject split does.
- The confusable pairs of real HAR are confusable here: sitting and standing differ only by a
  torso pitch whose per-person spread overlaps the mounting tilt; walking, upstairs and downstairs
  differ by step frequency, amplitude and waveform, each within the spread between people.
- Every window starts at a random gait phase, so a linear model on the raw window cannot tell
  the moving classes apart, while a small CNN can.

Two populations share the model with different spreads: `field` (the federated subjects: phones
worn anyhow) and `lab` (a public source population: careful sensor placement, narrower gait
variation, clean sensors), used as the server's public data for a warm start.

Device path: torch + stdlib only, Python 3.9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "lying")
CHANNELS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z",
            "total_acc_x", "total_acc_y", "total_acc_z")
RATE_HZ = 50.0
WINDOW = 128
DYNAMIC = 3  # activities 0..2 move, 3..5 are static postures
TEST_SUBJECT_FRACTION = 0.3  # UCI HAR: 9 of 30 subjects are test-only

# Per dynamic activity: step-frequency factor, amplitude factor, torso pitch offset (radians:
# leaning into the stairs going up, back going down), and the vertical waveform as (amplitude,
# phase) of odd harmonics 1, 3, 5, 7 of the step phase.
_FREQ = (1.0, 0.9, 1.1)
_AMP = (1.0, 1.15, 1.3)
_LEAN = (0.0, 0.08, -0.05)
_HARMONICS = (
    ((1.0, 0.0), (0.15, 0.6), (0.05, 0.0), (0.0, 0.0)),  # walking: nearly sinusoidal
    ((0.85, 0.0), (0.4, 1.7), (0.15, 0.4), (0.05, 0.0)),  # upstairs: flattened, slow push
    ((0.8, 0.0), (0.45, 0.3), (0.3, 0.6), (0.2, 0.9)),  # downstairs: impact spikes
)


@dataclass(frozen=True)
class Population:
    """The spread of person-level traits; `field` is the federated population, `lab` public."""

    step_hz: Tuple[float, float] = (1.4, 2.2)  # steps per second when walking
    amp: Tuple[float, float] = (0.1, 0.35)  # vertical body acceleration when walking, in g
    tilt_max: float = 0.3  # sensor mounting rotation, radians (about 17 degrees)
    sit_pitch: Tuple[float, float] = (0.3, 0.6)  # torso pitch when sitting, radians
    stand_pitch: Tuple[float, float] = (-0.05, 0.12)  # people stand more or less upright
    style: float = 0.15  # relative spread of a person's gait harmonics and activity factors
    gain: float = 0.1  # std of per-axis sensor gain around 1
    offset: float = 0.04  # std of per-channel sensor bias, in g (accelerometer) or rad/s (gyro)
    noise: Tuple[float, float] = (0.03, 0.12)  # sensor noise std
    sway: float = 0.03  # body sway while static, in g
    mount_bias: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotation vector (axis x angle)
    # shared by everyone: where this population wears the sensor, relative to the field's


POPULATIONS: Dict[str, Population] = {
    "field": Population(),
    "lab": Population(step_hz=(1.3, 1.9), amp=(0.12, 0.32), tilt_max=0.15, sit_pitch=(0.35, 0.6),
                      stand_pitch=(-0.04, 0.1), style=0.1, gain=0.05, offset=0.02,
                      noise=(0.02, 0.06), sway=0.02, mount_bias=(0.0, 0.15, 0.35)),
}


@dataclass(frozen=True)
class _People:
    """Per-subject traits, each (S, ...)."""

    step_hz: Tensor
    amp: Tensor
    mount: Tensor  # (S, 3, 3) torso -> sensor rotation
    pitch: Tensor  # (S, 6) torso pitch per activity
    freq: Tensor  # (S, 3) step-frequency factor per dynamic activity
    amp_factor: Tensor  # (S, 3)
    harmonics: Tensor  # (S, 3, 4, 2) personal waveform per dynamic activity
    gain: Tensor  # (S, 6) accelerometer xyz, gyroscope xyz
    offset: Tensor  # (S, 6)
    noise: Tensor  # (S,)


def _uniform(lo_hi: Tuple[float, float], shape: Tuple[int, ...], gen: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _rotation(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: rotation matrices (N, 3, 3) about unit `axis` (N, 3) by `angle` (N,)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)  # cross matrix
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3).expand_as(k) + s * k + (1 - c) * (k @ k)


def _random_rotation(n: int, max_angle: float, gen: torch.Generator) -> Tensor:
    """n rotations about random axes by angles uniform in [0, max_angle]."""
    axis = torch.randn((n, 3), generator=gen)
    axis = axis / axis.norm(dim=1, keepdim=True)
    return _rotation(axis, max_angle * torch.rand((n,), generator=gen))


def _pitch(angle: Tensor) -> Tensor:
    """Rotations (N, 3, 3) about the y axis (torso lean)."""
    axis = torch.tensor([0.0, 1.0, 0.0]).expand(angle.shape[0], 3)
    return _rotation(axis, angle)


def _bias(vector: Tuple[float, float, float]) -> Tensor:
    """The rotation (1, 3, 3) of a rotation vector; the identity for (0, 0, 0)."""
    v = torch.tensor([vector], dtype=torch.float32)
    angle = v.norm(dim=1)
    if float(angle) == 0.0:
        return torch.eye(3)[None]
    return _rotation(v / angle, angle)


def _people(subjects: int, pop: Population, gen: torch.Generator) -> _People:
    """Draw every subject's traits from the population."""
    s = subjects
    pitch = torch.zeros((s, 6))
    pitch[:, :DYNAMIC] = _uniform(pop.stand_pitch, (s,), gen)[:, None] + torch.tensor(_LEAN)
    pitch[:, 3] = _uniform(pop.sit_pitch, (s,), gen)
    pitch[:, 4] = _uniform(pop.stand_pitch, (s,), gen)
    pitch[:, 5] = _uniform((1.4, 1.7), (s,), gen)  # lying on the back, head slightly raised
    base = torch.tensor(_HARMONICS)  # (3, 4, 2)
    jitter = torch.randn((s, 3, 4, 2), generator=gen) * pop.style
    harmonics = torch.stack([base[..., 0] * (1 + jitter[..., 0]).clamp(min=0.1),
                             base[..., 1] + jitter[..., 1]], -1)
    return _People(
        step_hz=_uniform(pop.step_hz, (s,), gen),
        amp=_uniform(pop.amp, (s,), gen),
        mount=_random_rotation(s, pop.tilt_max, gen) @ _bias(pop.mount_bias),
        pitch=pitch,
        freq=torch.tensor(_FREQ) * (1 + 0.2 * pop.style * torch.randn((s, 3), generator=gen)),
        amp_factor=torch.tensor(_AMP) * (1 + 0.5 * pop.style * torch.randn((s, 3), generator=gen)),
        harmonics=harmonics,
        gain=1 + pop.gain * torch.randn((s, 6), generator=gen),
        offset=pop.offset * torch.randn((s, 6), generator=gen),
        noise=_uniform(pop.noise, (s,), gen),
    )


@dataclass(frozen=True)
class _Draws:
    """Every per-window random number `generate` uses, drawn up front in one fixed order so the
    windows can then be computed a chunk at a time with the same result."""

    freq: Tensor  # (N,) step-frequency jitter
    amp: Tensor  # (N,) amplitude jitter
    phase: Tensor  # (N,) gait phase
    sway: Tensor  # (N, 6, T) slow motion of a static posture (unit scale)
    frame: Tensor  # (N, 3, 3) torso -> sensor frame
    noise: Tensor  # (N, 9, T) sensor noise (unit scale)


def _draws(y: Tensor, who: Tensor, people: _People, gen: torch.Generator) -> _Draws:
    n = y.shape[0]
    freq = torch.randn((n,), generator=gen)
    amp = torch.randn((n,), generator=gen)
    phase = torch.rand((n,), generator=gen)
    sway = _drift((n, 6, WINDOW), gen)
    lean = _pitch(people.pitch[who, y] + 0.06 * torch.randn((n,), generator=gen))
    frame = people.mount[who] @ _random_rotation(n, 0.05, gen) @ lean
    noise = torch.randn((n, 9, WINDOW), generator=gen)
    return _Draws(freq, amp, phase, sway, frame, noise)


def _gait(y: Tensor, who: Tensor, people: _People, pop: Population, d: _Draws,
          sl: slice) -> Tuple[Tensor, Tensor]:
    """Body acceleration and rotation rate in the torso frame, (n, 3, T) each, for windows sl."""
    y, who = y[sl], who[sl]
    t = torch.arange(WINDOW, dtype=torch.float32) / RATE_HZ  # (T,)
    dyn = (y < DYNAMIC).float()[:, None]  # (n, 1)
    a_idx = y.clamp(max=DYNAMIC - 1)
    freq = people.step_hz[who] * people.freq[who, a_idx] * (1 + 0.04 * d.freq[sl])
    amp = people.amp[who] * people.amp_factor[who, a_idx] * (1 + 0.1 * d.amp[sl])
    phase = 4 * math.pi * d.phase[sl]  # a full stride: two steps
    theta = 2 * math.pi * freq[:, None] * t + phase[:, None]  # (n, T) step phase
    harm = people.harmonics[who, a_idx]  # (n, 4, 2)
    k = torch.arange(1, 8, 2, dtype=torch.float32)[None, :, None]  # (1, 4, 1) odd harmonics
    wave = harm[..., 0:1] * torch.sin(k * theta[:, None, :] + harm[..., 1:2])  # (n, 4, T)
    vertical = wave.sum(1)  # (n, T)
    forward = 0.5 * torch.sin(theta + 1.2) + 0.2 * torch.sin(3 * theta + 0.5)
    lateral = 0.35 * torch.sin(0.5 * theta)  # sway at the stride (two steps) frequency
    acc = torch.stack([vertical, forward, lateral], 1) * (amp[:, None] * dyn)[:, None, :]
    gyro = torch.stack([0.6 * torch.sin(0.5 * theta + 0.3),  # roll with the stride
                        1.2 * torch.sin(theta + 2.0) + 0.3 * wave[:, 1],  # pitch with each step
                        0.4 * torch.sin(0.5 * theta - 0.8)], 1)  # yaw with the stride
    gyro = gyro * (2 * amp[:, None] * dyn)[:, None, :]
    sway = pop.sway * (1 - dyn)[:, None, :] * d.sway[sl]  # static: small sway
    return acc + sway[:, :3], gyro + sway[:, 3:]


def _drift(shape: Tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """Slow random motion (a smoothed random walk, unit scale), (N, C, T)."""
    steps = torch.randn(shape, generator=gen).view(-1, 1, shape[2])
    kernel = torch.ones(1, 1, 15) / 15
    # in slices of rows: one conv over every row unfolds all of them at once (15 copies, ~0.5 GB
    # at 10,000 windows); each row's result is the same either way
    for rows in steps.split(CHUNK * shape[1]):
        rows.copy_(torch.nn.functional.conv1d(rows, kernel, padding=7))
    return steps.view(shape) * 4.0


CHUNK = 1024  # windows computed at once: bounds the transients (~40 KiB per window) to ~45 MiB


def generate(windows: int, subjects: int, seed: int, population: str = "field"
             ) -> Tuple[Tensor, Tensor, Tensor]:
    """`windows` labelled windows from `subjects` people: x (N, 9, 128) f32, y (N,), groups (N,).

    Labels are balanced and people are drawn uniformly; the result depends only on the arguments.
    """
    pop = POPULATIONS[population]
    gen = torch.Generator().manual_seed(seed)
    people = _people(subjects, pop, gen)
    y = torch.arange(windows) % len(ACTIVITIES)
    y = y[torch.randperm(windows, generator=gen)]
    who = torch.randint(0, subjects, (windows,), generator=gen)
    d = _draws(y, who, people, gen)
    gravity = torch.tensor([1.0, 0.0, 0.0])[:, None]  # (3, 1) upright, in g
    x = d.noise  # overwritten a chunk at a time: the noise is its last term
    for start in range(0, windows, CHUNK):
        sl = slice(start, start + CHUNK)
        acc, gyro = _gait(y, who, people, pop, d, sl)  # (n, 3, T) torso frame
        frame, w = d.frame[sl], who[sl]
        gain, offset = people.gain[w][:, :, None], people.offset[w][:, :, None]  # (n, 6, 1)
        body_acc = (frame @ acc) * gain[:, :3]  # (n, 3, T)
        body_gyro = (frame @ gyro) * gain[:, 3:] + offset[:, 3:]
        total_acc = body_acc + (frame @ gravity) * gain[:, :3] + offset[:, :3]
        clean = torch.cat([body_acc, body_gyro, total_acc], 1)  # (n, 9, T)
        x[sl] = clean + people.noise[w][:, None, None] * x[sl]
    return x.float().contiguous(), y.long(), who.long()


def split_subjects(subjects: int, seed: int, fraction: float = TEST_SUBJECT_FRACTION) -> Tensor:
    """The subject ids held out for testing (sorted): about `fraction` of them, at least one."""
    if subjects < 2 or fraction <= 0:
        return torch.zeros(0, dtype=torch.long)
    count = min(subjects - 1, max(1, int(round(subjects * fraction))))
    perm = torch.randperm(subjects, generator=torch.Generator().manual_seed(seed ^ 0x5E57))
    return perm[:count].sort().values
