# Conveniences over the scripts; the README's two commands need no make.
.PHONY: setup demo test lint proto bench reliability sdk-versions install
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
# The reliability suite (docs/reliability.md): faults, fuzzing, hostile
# requests, a full disk, the CPU budget, then the load and budget benches, short.
reliability: setup
	.venv/bin/python -m pytest -q tests/test_faults.py tests/test_target_faults.py tests/test_fuzz.py tests/test_bad_input.py \
	  tests/test_hostile.py tests/test_access.py tests/test_disk_full.py tests/test_budget.py
	.venv/bin/python bench/load.py --clients 20 --seconds 10 --registrations 1000
	.venv/bin/python bench/cpu_budget.py --repeats 3
# The Python SDK on 3.11, 3.12 and 3.13 (pyenv's interpreters put on PATH for tox).
sdk-versions: setup
	PATH="$$(ls -d $$HOME/.pyenv/versions/3.1[123]*/bin 2>/dev/null | tr '\n' ':')$$PATH" \
	  .venv/bin/tox -e sdk-py311,sdk-py312,sdk-py313
# System-wide install: /opt/coral, /usr/bin links, units, /etc/coral, the coral user.
install:
	./scripts/install.sh
