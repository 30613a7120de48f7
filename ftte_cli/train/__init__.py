"""`ftte train`: orchestration of a training run on a real fleet (run.py), its plan and folder."""
