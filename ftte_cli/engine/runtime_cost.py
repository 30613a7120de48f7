"""What the client runtime itself costs in memory, before and beyond a plan's own tensors.

FTTE.md section 1: M_i = free memory - runtime baseline - safety margin, where the runtime
baseline is the resident memory after `import torch` and building the model, plus the runtime's
own cost of a first real training step beyond the plan's tensors (allocator, autograd, thread
pools). On a fleet `ftte profile` measures both per device; where nothing is measured (the
simulator's device classes) these figures stand in. One home for them, so the simulated fleet and
the fleet budget subtract the same thing.

Measured on x86-64, torch 2.13 CPU, har_cnn: `import torch` alone 219 MiB RSS, with the model
~260 MiB; one training step raises the peak ~50 MiB over that while the plan's estimate is
2.98 MiB. ARM builds differ; replay measured profiles (`ftte simulate --fleet`) for real boards.
"""

from __future__ import annotations

MiB = 2**20

TORCH_RUNTIME_BYTES = 260 * MiB  # RSS after import torch + building the model
STEP_OVERHEAD_BYTES = 50 * MiB  # a first training step's runtime cost beyond the plan's tensors


def usable_training_memory(free_bytes: int, margin_bytes: int,
                           runtime_bytes: int = TORCH_RUNTIME_BYTES,
                           step_overhead_bytes: int = STEP_OVERHEAD_BYTES) -> int:
    """M_i = free - runtime baseline - step overhead - margin (negative: nothing fits)."""
    return free_bytes - runtime_bytes - step_overhead_bytes - margin_bytes
