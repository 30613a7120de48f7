"""load_federated: load a dataset, hold out the server's splits, partition the rest, standardise.

Order of operations (all seeded by `seed`):
1. Load the source (`loaders.load_source`).
2. Hold out random samples, before partitioning, so they belong to no client: the global test
   split (`test_fraction`, unless the dataset ships its own test split, which is then used whole)
   and the server's proxy split (`proxy_fraction`). For `by_group` these are random windows, not
   whole subjects: every subject is seen in training and the test split measures accuracy on the
   same population; generalisation to unseen people is what a shipped test split measures
   (UCI HAR's test subjects are not among its training subjects).
3. Partition the remaining pool between `num_clients` clients (`partition.PARTITIONERS`); each
   client keeps `client_test_fraction` of its shard as its own held-out part.
4. Standardise every split per channel with the mean and std of the clients' training parts.

With a `pretrain` warm start the server also gets public data (`FederatedData.public`), which no
client holds: for synthetic HAR another population (`synthetic_har.POPULATIONS["lab"]`); for a
dataset with subjects, `init.public_fraction` of the pool's subjects; otherwise that share of the
pool's samples. It is held out after step 2 and standardised like every other split.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ftte_cli.config.recipe import DataConfig, InitConfig
from ftte_cli.engine.data.dataset import ClientData, Dataset, FederatedData, standardize
from ftte_cli.engine.data.loaders import Source, load_source, synthetic_har_public
from ftte_cli.engine.data.partition import partition

log = logging.getLogger(__name__)

_STREAM = 0x44415441  # separates this module's random stream from others seeded by `seed`
_PUBLIC_STREAM = 0x50554231  # the public split's own stream: other splits do not move with it


def _index(idx: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))


def _hold_out(source: Source, cfg: DataConfig,
              rng: np.random.Generator) -> Tuple[Dataset, Dataset, Dataset]:
    """(pool for clients, proxy, test), disjoint."""
    n = len(source.train)
    perm = rng.permutation(n)
    n_test = 0 if source.test is not None else int(round(n * cfg.test_fraction))
    n_proxy = int(round(n * cfg.proxy_fraction))
    test = source.test if source.test is not None else source.train.subset(_index(perm[:n_test]))
    proxy = source.train.subset(_index(np.sort(perm[n_test:n_test + n_proxy])))
    pool = source.train.subset(_index(np.sort(perm[n_test + n_proxy:])))
    return pool, proxy, test


def _client_split(data: Dataset, fraction: float,
                  rng: np.random.Generator) -> Tuple[Dataset, Dataset]:
    """(train, test) of one client's shard; with fraction > 0 both parts are non-empty."""
    n = len(data)
    n_test = int(round(n * fraction))
    if fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    perm = rng.permutation(n)
    return (data.subset(_index(np.sort(perm[n_test:]))),
            data.subset(_index(np.sort(perm[:n_test]))))


def _hold_out_public(pool: Dataset, cfg: DataConfig, init: Optional[InitConfig],
                     seed: int) -> Tuple[Dataset, Optional[Dataset]]:
    """(pool for clients, public data or None); see the module docstring."""
    if init is None or init.method != "pretrain":
        return pool, None
    if cfg.dataset == "synthetic_har":
        return pool, synthetic_har_public(init.public_windows, init.public_subjects,
                                          seed ^ _PUBLIC_STREAM)
    rng = np.random.default_rng([seed, _PUBLIC_STREAM])
    if pool.groups is not None and len(pool.groups.unique()) >= 2:
        names = rng.permutation(pool.groups.unique().numpy())
        chosen = names[:max(1, int(round(len(names) * init.public_fraction)))]
        public = np.isin(pool.groups.numpy(), chosen)
    else:
        public = np.zeros(len(pool), dtype=bool)
        public[rng.permutation(len(pool))[:int(round(len(pool) * init.public_fraction))]] = True
    return (pool.subset(_index(np.flatnonzero(~public))),
            pool.subset(_index(np.flatnonzero(public))))


def pooled_channel_stats(parts: Sequence[Dataset]) -> Tuple[Tensor, Tensor]:
    """Per-channel (dim 1) mean and std over several datasets, without concatenating them."""
    total = count = sq = None
    for part in parts:
        x = part.x.double()
        dims = [0] + list(range(2, x.dim()))
        s, q = x.sum(dim=dims), (x * x).sum(dim=dims)
        c = x.numel() // x.shape[1] if x.numel() else 0
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
        count = c if count is None else count + c
    assert total is not None and sq is not None and count
    mean = total / count
    std = (sq / count - mean * mean).clamp(min=0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.float(), std.float()


def load_federated(cfg: DataConfig, num_clients: int, seed: int,
                   init: Optional[InitConfig] = None) -> FederatedData:
    """The recipe's dataset split into `num_clients` clients, a proxy split and a test split."""
    source = load_source(cfg.dataset, cfg.path, cfg.windows, cfg.subjects, seed)
    rng = np.random.default_rng([seed, _STREAM])
    pool, proxy, test = _hold_out(source, cfg, rng)
    pool, public = _hold_out_public(pool, cfg, init, seed)
    groups = None if pool.groups is None else pool.groups.numpy()
    parts = partition(cfg.partition, pool.y.numpy(), groups, num_clients, cfg.alpha, rng)
    shards = [_client_split(pool.subset(_index(idx)), cfg.client_test_fraction, rng)
              for idx in parts]
    mean, std = pooled_channel_stats([train for train, _ in shards])
    clients: List[ClientData] = [
        ClientData(i, standardize(train, mean, std), standardize(held, mean, std))
        for i, (train, held) in enumerate(shards)]
    log.info("%s: %d clients (%s), %d proxy, %d test samples", source.name, num_clients,
             cfg.partition, len(proxy), len(test))
    return FederatedData(clients=clients, proxy=standardize(proxy, mean, std),
                         test=standardize(test, mean, std), num_classes=source.num_classes,
                         input_shape=source.train.input_shape,
                         class_names=list(source.class_names), channel_mean=mean,
                         channel_std=std,
                         public=None if public is None else standardize(public, mean, std))
