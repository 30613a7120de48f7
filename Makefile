# The two front-door commands: `make demo` and `make test` (each installs what it needs first).
.PHONY: setup demo test lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/ftte demo

test: setup lint
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check ftte_cli tests benchmarks examples
	.venv/bin/mypy ftte_cli

clean:
	rm -rf .venv runs .testbed
