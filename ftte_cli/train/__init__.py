"""`ftte train`: orchestration of a training run on a real fleet (run.py) and its plan; its run
directory is written by rundir/train.py."""
