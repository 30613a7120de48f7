# The two front-door commands: `make demo` and `make test` (each installs what it needs first).
.PHONY: setup demo test test-fast lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/ftte demo

test: setup lint
	.venv/bin/python -m pytest -q -p no:cacheprovider

# The inner loop: pure engine, config, UI and formula tests (no sshd, testbed, subprocess or
# train-to-target), about 20 s; `make test` still runs everything.
FAST = config coordinator dashboard energy inventory models power report server_opt sparse \
       startmodel strategies
test-fast: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider $(FAST:%=tests/test_%.py)

lint: setup
	.venv/bin/ruff check ftte_cli tests benchmarks examples
	.venv/bin/mypy ftte_cli

clean:
	rm -rf .venv runs .testbed
