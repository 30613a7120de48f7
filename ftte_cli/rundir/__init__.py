"""The run directory: its layout, the writers of `ftte train` and `ftte simulate`, the reader.

    store.py     file I/O every run directory uses: atomic JSON and safetensors writes,
                 JSON-lines appenders, checkpoints, `new_run_dir`
    jsonable.py  `to_jsonable`: plain JSON types from dataclasses, enums and paths
    train.py     `RunDir`, the directory `ftte train` writes (layout in its docstring):
                 manifest.json, plan, metrics.jsonl, events.jsonl, checkpoints/, summary.json
    sim.py       `RunWriter`, the directory `ftte simulate` writes: manifest.json,
                 <strategy>/metrics.jsonl, summary.json, and the rows its table is drawn from
    reader.py    `load_run`: either kind read back into one `RunReport` (`ftte report`, the
                 API, sweeps, TensorBoard export), and `report_rows` for its JSON

Nothing here prints: tables and plots of a run live in `ui/`. This package imports nothing at
package level, so `from ftte_cli.rundir.jsonable import to_jsonable` stays light.
"""
