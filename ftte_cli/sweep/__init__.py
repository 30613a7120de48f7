"""Experiment sweeps: a grid of runs (strategies x seeds x `--set` values) on the fleet or in the
simulator, one run at a time, resumable, ending with a comparison (grid.py, runner.py,
compare.py)."""
