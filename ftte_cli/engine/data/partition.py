"""Partitioners: how a pool of samples is dealt out to clients (index arrays, one per client).

All randomness comes from the `numpy.random.Generator` passed in. Every partitioner returns
disjoint index arrays that together cover the pool, and gives every client at least
`min_size` samples (moving random samples from the largest clients when the draw left one short).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np

from ftte_cli.errors import DataError

MIN_CLIENT_SAMPLES = 10  # enough for a train part and a held-out part
DIRICHLET_TRIES = 50


def _check_size(n: int, clients: int, min_size: int) -> None:
    if n < clients * min_size:
        raise DataError(f"data.clients: {n} training samples cannot give {clients} clients "
                        f"{min_size} samples each; use fewer clients")


def _ensure_min(parts: List[np.ndarray], min_size: int,
                rng: np.random.Generator) -> List[np.ndarray]:
    """Top up clients below `min_size` with random samples taken from the largest client."""
    parts = [rng.permutation(p) for p in parts]
    for i in range(len(parts)):
        while len(parts[i]) < min_size:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            take = min(min_size - len(parts[i]), len(parts[donor]) - min_size)
            parts[i] = np.concatenate([parts[i], parts[donor][:take]])
            parts[donor] = parts[donor][take:]
    return [np.sort(p) for p in parts]


def iid(labels: np.ndarray, groups: Optional[np.ndarray], clients: int, alpha: float,
        rng: np.random.Generator, min_size: int = MIN_CLIENT_SAMPLES) -> List[np.ndarray]:
    """A random shuffle dealt into near-equal parts."""
    _check_size(len(labels), clients, min_size)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), clients)]


def dirichlet(labels: np.ndarray, groups: Optional[np.ndarray], clients: int, alpha: float,
              rng: np.random.Generator, min_size: int = MIN_CLIENT_SAMPLES) -> List[np.ndarray]:
    """Label skew: each class is split between clients by proportions ~ Dir(alpha).

    As in Hsu et al. (2019) and FedML: redraw (up to DIRICHLET_TRIES times) until every client
    has `min_size` samples, then top up the rest; a client already holding its fair share
    receives no more of later classes, which keeps sizes from running away at small alpha.
    """
    n = len(labels)
    _check_size(n, clients, min_size)
    best: List[np.ndarray] = []
    for _ in range(DIRICHLET_TRIES):
        parts: List[List[int]] = [[] for _ in range(clients)]
        for cls in rng.permutation(np.unique(labels)):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            share = rng.dirichlet(np.full(clients, alpha))
            share *= np.array([len(p) < n / clients for p in parts])
            share = share / share.sum() if share.sum() > 0 else np.full(clients, 1 / clients)
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        best = [np.array(p, dtype=np.int64) for p in parts]
        if min(len(p) for p in best) >= min_size:
            break
    return _ensure_min(best, min_size, rng)


def by_group(labels: np.ndarray, groups: Optional[np.ndarray], clients: int, alpha: float,
             rng: np.random.Generator, min_size: int = MIN_CLIENT_SAMPLES) -> List[np.ndarray]:
    """Natural groups (e.g. subjects): shuffled groups dealt round-robin to clients.

    With at least as many groups as clients, every group lives in exactly one client. With more
    clients than groups, client j joins group j mod G and each group is split evenly (at random)
    between its clients.
    """
    if groups is None:
        raise DataError("data.partition: by_group needs natural groups (e.g. subjects) and this "
                        "dataset has none; use iid, dirichlet or quantity")
    _check_size(len(labels), clients, min_size)
    order = rng.permutation(np.unique(groups))
    members = {g: rng.permutation(np.flatnonzero(groups == g)) for g in order}
    if len(order) >= clients:
        parts = [np.concatenate([members[g] for g in order[c::clients]]) for c in range(clients)]
    else:
        owners: Dict[int, List[int]] = {int(g): [] for g in order}
        for c in range(clients):
            owners[int(order[c % len(order)])].append(c)
        parts = [np.zeros(0, dtype=np.int64)] * clients
        for g, cs in owners.items():
            for c, chunk in zip(cs, np.array_split(members[g], len(cs))):
                parts[c] = chunk
    return _ensure_min(parts, min_size, rng)


def quantity(labels: np.ndarray, groups: Optional[np.ndarray], clients: int, alpha: float,
             rng: np.random.Generator, min_size: int = MIN_CLIENT_SAMPLES) -> List[np.ndarray]:
    """Quantity skew: client sizes follow a power law, size ~ rank^-alpha, ranks shuffled.

    Every client first gets `min_size` samples; the rest is shared by the power-law weights.
    Labels stay IID within each client.
    """
    n = len(labels)
    _check_size(n, clients, min_size)
    weights = rng.permutation(np.arange(1, clients + 1, dtype=np.float64) ** -alpha)
    extra = np.floor(weights / weights.sum() * (n - clients * min_size)).astype(int)
    extra[np.argmax(weights)] += n - clients * min_size - extra.sum()  # rounding remainder
    cuts = np.cumsum(min_size + extra)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


Partitioner = Callable[[np.ndarray, Optional[np.ndarray], int, float, np.random.Generator, int],
                       List[np.ndarray]]

PARTITIONERS: Dict[str, Partitioner] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "by_group": by_group,
    "quantity": quantity,
}


def partition(kind: str, labels: np.ndarray, groups: Optional[np.ndarray], clients: int,
              alpha: float, rng: np.random.Generator,
              min_size: int = MIN_CLIENT_SAMPLES) -> List[np.ndarray]:
    """Split sample indices 0..len(labels)-1 between `clients` with the named partitioner."""
    if kind not in PARTITIONERS:
        raise DataError(f"data.partition: unknown {kind!r} (known: {', '.join(PARTITIONERS)})")
    if clients < 1:
        raise DataError(f"data.clients: must be > 0, got {clients}")
    return PARTITIONERS[kind](labels, groups, clients, alpha, rng, min_size)
