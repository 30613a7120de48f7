"""Optional: the Flower side of benchmarks/sim_speed.py (same FedAvg work, Flower's simulation).

Flower is not an ftte dependency (it pins typer and rich below what ftte needs), so run this
from an environment of its own that has flwr[simulation] and torch, with this repository on
PYTHONPATH (the data and model come from ftte's engine, which needs only torch and numpy):

    python -m venv /tmp/flwr && /tmp/flwr/bin/pip install 'flwr[simulation]' torch numpy pyyaml
    PYTHONPATH=. /tmp/flwr/bin/python benchmarks/sim_speed_flower.py --sizes 20x3,100x5,500x5

It prints, per CLIENTSxROUNDS, Flower's wall time, CPU time, peak RSS of the process tree and
final accuracy (the same measurement as sim_speed.py), to set beside sim_speed.py's table.
Written against Flower's NumPyClient / ServerApp(server_fn) / run_simulation API (1.10 and
later); it was not run where this file was written (no Flower there).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_speed  # noqa: E402  (the shared measurement helpers)


def flower_child(clients: int, rounds: int, threads: int) -> Dict[str, Any]:
    """Run FedAvg in Flower's simulation runtime on ftte's shards; the final accuracy."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from ftte_cli.config.recipe import load_recipe
    from ftte_cli.engine.data import load_federated
    from ftte_cli.engine.models import build_model

    torch.set_num_threads(threads)
    recipe = load_recipe(sim_speed.HAR)
    data = load_federated(replace(recipe.data, clients=clients), clients, recipe.seed)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.input_shape, data.num_classes)
    test = data.test
    if len(test) > sim_speed.EVAL_SAMPLES:
        gen = torch.Generator().manual_seed(recipe.seed)
        idx = torch.randperm(len(test), generator=gen)[:sim_speed.EVAL_SAMPLES].sort().values
        test = test.subset(idx)
    cfg = recipe.train
    names = [k for k, _ in model.state_dict().items()]

    def set_weights(arrays: List[np.ndarray]) -> None:
        model.load_state_dict({k: torch.from_numpy(a) for k, a in zip(names, arrays)})

    def get_weights() -> List[np.ndarray]:
        return [v.detach().numpy().copy() for v in model.state_dict().values()]

    class Client(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int) -> None:
            self.shard = data.clients[cid].train

        def fit(self, parameters: List[np.ndarray], config: Dict[str, Any]
                ) -> Tuple[List[np.ndarray], int, Dict[str, Any]]:
            set_weights(parameters)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            n = len(self.shard)
            for _ in range(cfg.epochs):
                for idx in torch.randperm(n).split(cfg.batch_size):
                    opt.zero_grad()
                    F.cross_entropy(model(self.shard.x[idx]), self.shard.y[idx]).backward()
                    opt.step()
            return get_weights(), n, {}

    accuracy: List[float] = []

    def central_eval(rnd: int, parameters: List[np.ndarray], config: Dict[str, Any]
                     ) -> Tuple[float, Dict[str, float]]:
        set_weights(parameters)
        with torch.no_grad():
            logits = model(test.x)
        accuracy.append(float((logits.argmax(1) == test.y).float().mean()))
        return float(F.cross_entropy(logits, test.y)), {"accuracy": accuracy[-1]}

    def client_fn(context: Context) -> Any:
        return Client(int(context.node_config["partition-id"])).to_client()

    def server_fn(context: Context) -> Any:
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                          min_available_clients=clients, evaluate_fn=central_eval,
                          initial_parameters=ndarrays_to_parameters(get_weights()))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return {"final_accuracy": accuracy[-1] if accuracy else None}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="20x3,100x5,500x5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        clients, rounds = sim_speed._size(args.child)
        print(json.dumps(flower_child(clients, rounds, args.threads)))
        return 0
    rows = []
    for size in args.sizes.split(","):
        m = sim_speed.measure([sys.executable, __file__, "--child", size, "--threads",
                               str(args.threads)], last_line=True)
        rows.append({"size": size, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
                     "peak_mib": m["peak_mib"], "final_accuracy": m["doc"].get("final_accuracy")})
        r = rows[-1]
        print(f"flower {size}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
              f"{r['peak_mib']:.0f} MiB, acc {r['final_accuracy']}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
