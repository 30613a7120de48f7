# The two front-door commands: `make demo` and `make test` (each installs what it needs first).
.PHONY: setup demo test test-fast test-slow lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/ftte demo

test: setup lint
	.venv/bin/python -m pytest -q -p no:cacheprovider

# The inner loop: every test not marked `slow` (no subprocess, sshd, testbed, Ray or
# train-to-target; the marker is registered in pyproject.toml), under 90 s on 2 cores.
# `make test` still runs everything; `make test-slow` runs only the slow lane.
test-fast: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m slow

lint: setup
	.venv/bin/ruff check ftte_cli tests benchmarks examples
	.venv/bin/mypy ftte_cli

clean:
	rm -rf .venv runs .testbed
