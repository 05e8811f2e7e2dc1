# Conveniences over the scripts; the README's two commands need no make.
.PHONY: setup demo test lint proto bench
setup:
	./scripts/setup.sh
demo:
	./scripts/demo.sh
test:
	./scripts/test.sh
lint: setup
	.venv/bin/ruff check coral tests examples
	.venv/bin/mypy coral tests examples
proto: setup
	./scripts/genproto.sh
bench: setup
	.venv/bin/python bench/native_overhead.py
