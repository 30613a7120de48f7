"""engine/data: datasets, loaders, partitioners and the federated split.

`Dataset`, `ClientData`, `FederatedData` and `synthetic_har` import only torch (device path);
`load_federated` pulls in numpy and the loaders on first use, so importing this package on a
device never needs numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftte_cli.engine.data.dataset import ClientData, Dataset, FederatedData

if TYPE_CHECKING:
    from ftte_cli.config.recipe import DataConfig, InitConfig

__all__ = ["ClientData", "Dataset", "FederatedData", "load_federated"]


def load_federated(cfg: DataConfig, num_clients: int, seed: int,
                   init: InitConfig | None = None) -> FederatedData:
    """Load/generate the recipe's dataset and split it (see engine/data/federated.py).

    With `init.method == "pretrain"` the result also holds the server's public data.
    """
    from ftte_cli.engine.data.federated import load_federated as _load

    return _load(cfg, num_clients, seed, init)
