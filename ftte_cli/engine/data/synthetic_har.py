"""Synthetic human-activity windows shaped like UCI HAR: 9 channels x 128 samples at 50 Hz.

Each simulated person has their own step frequency, movement amplitude, sensor orientation (a
rotation of the whole sensor frame) and noise level, so splitting by subject is naturally non-IID.
Static activities differ only in the direction of gravity; dynamic ones share the upright posture
and differ in step frequency, amplitude and waveform shape (harmonic content). Because every window
starts at a random gait phase, a dynamic class has the same mean signal as standing still, so a
linear model on the raw window cannot tell those four apart, while a small CNN can.

Device path: torch + stdlib only, Python 3.9.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "lying")
CHANNELS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z",
            "total_acc_x", "total_acc_y", "total_acc_z")
RATE_HZ = 50.0
WINDOW = 128
DYNAMIC = 3  # activities 0..2 move, 3..5 are static postures

# Per dynamic activity: step-frequency factor, amplitude factor, and the vertical waveform as
# (amplitude, phase) of harmonics 1..4 of the step frequency. Downstairs has sharp heel strikes
# (strong high harmonics), upstairs a slow, heavy push with a strong second harmonic.
_FREQ = (1.0, 0.85, 1.15)
_AMP = (1.0, 1.1, 1.3)
_HARMONICS = (
    ((1.0, 0.0), (0.15, 0.6), (0.0, 0.0), (0.0, 0.0)),  # walking: nearly sinusoidal
    ((0.8, 0.0), (0.5, 1.7), (0.1, 0.4), (0.0, 0.0)),  # upstairs: flattened, slow push
    ((0.8, 0.0), (0.55, 0.3), (0.4, 0.6), (0.3, 0.9)),  # downstairs: impact spikes
)
# Pitch of the torso (radians) for each posture; rotation is about the device y axis, so
# gravity moves from +x (upright) towards +z (lying on the back).
_PITCH = (0.0, 0.0, 0.0, 0.45, 0.0, 1.5708)

# Person-level variation.
_STEP_HZ = (1.5, 2.1)  # steps per second when walking
_AMP_RANGE = (0.12, 0.3)  # vertical body acceleration when walking, in g
_TILT_MAX = 0.2  # sensor mounting rotation, radians (about 11 degrees)
_NOISE = (0.02, 0.08)  # sensor noise std, in g and rad/s


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


def _gait(y: Tensor, step_hz: Tensor, amp: Tensor, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Body acceleration and rotation rate in the torso frame, (N, 3, T) each; zero when static."""
    n = y.shape[0]
    t = torch.arange(WINDOW, dtype=torch.float32) / RATE_HZ  # (T,)
    dyn = (y < DYNAMIC).float()[:, None]  # (N, 1)
    a_idx = y.clamp(max=DYNAMIC - 1)
    freq = step_hz * torch.tensor(_FREQ)[a_idx] * (1 + 0.04 * torch.randn((n,), generator=gen))
    amp = amp * torch.tensor(_AMP)[a_idx] * (1 + 0.1 * torch.randn((n,), generator=gen))
    phase = 4 * math.pi * torch.rand((n,), generator=gen)  # a full stride: two steps
    theta = 2 * math.pi * freq[:, None] * t + phase[:, None]  # (N, T) step phase
    harm = torch.tensor(_HARMONICS)[a_idx]  # (N, 4, 2)
    k = torch.arange(1, 8, 2, dtype=torch.float32)[None, :, None]  # (1, 4, 1) odd harmonics
    wave = harm[..., 0:1] * torch.sin(k * theta[:, None, :] + harm[..., 1:2])  # (N, 4, T)
    vertical = wave.sum(1)  # (N, T)
    forward = 0.5 * torch.sin(theta + 1.2) + 0.2 * torch.sin(3 * theta + 0.5)
    lateral = 0.35 * torch.sin(0.5 * theta)  # sway at the stride (two steps) frequency
    acc = torch.stack([vertical, forward, lateral], 1) * (amp[:, None] * dyn)[:, None, :]
    gyro = torch.stack([0.6 * torch.sin(0.5 * theta + 0.3),  # roll with the stride
                        1.2 * torch.sin(theta + 2.0) + 0.3 * wave[:, 1],  # pitch with each step
                        0.4 * torch.sin(0.5 * theta - 0.8)], 1)  # yaw with the stride
    gyro = gyro * (2 * amp[:, None] * dyn)[:, None, :]
    return acc, gyro  # (N, 3, T) each


def generate(windows: int, subjects: int, seed: int) -> Tuple[Tensor, Tensor, Tensor]:
    """`windows` labelled windows from `subjects` people: x (N, 9, 128) f32, y (N,), groups (N,).

    Labels are balanced and people are drawn uniformly; the result depends only on the arguments.
    """
    gen = torch.Generator().manual_seed(seed)
    step_hz = _uniform(_STEP_HZ, (subjects,), gen)
    amp = _uniform(_AMP_RANGE, (subjects,), gen)
    noise = _uniform(_NOISE, (subjects,), gen)
    mount = _random_rotation(subjects, _TILT_MAX, gen)  # (S, 3, 3)

    y = torch.arange(windows) % len(ACTIVITIES)
    y = y[torch.randperm(windows, generator=gen)]
    groups = torch.randint(0, subjects, (windows,), generator=gen)

    acc, gyro = _gait(y, step_hz[groups], amp[groups], gen)  # (N, 3, T) torso frame
    lean = _pitch(torch.tensor(_PITCH)[y] + 0.1 * torch.randn((windows,), generator=gen))
    frame = mount[groups] @ _random_rotation(windows, 0.05, gen) @ lean  # torso -> sensor
    gravity = torch.tensor([1.0, 0.0, 0.0]).expand(windows, 3)  # (N, 3) upright, in g
    body_acc = frame @ acc  # (N, 3, T)
    body_gyro = frame @ gyro
    total_acc = body_acc + (frame @ gravity[:, :, None])  # gravity broadcast over time
    x = torch.cat([body_acc, body_gyro, total_acc], 1)  # (N, 9, T)
    x = x + noise[groups][:, None, None] * torch.randn(x.shape, generator=gen)
    return x.float().contiguous(), y.long(), groups.long()
