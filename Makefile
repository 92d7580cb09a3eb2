# Two entry points (see README): `make run` and `make test`. Both create .venv if absent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chanprune-installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@# On a machine without an NVIDIA GPU, pin torch to the local CPU wheel unless a torch is already installed.
	@if $(PY) -c "import torch" 2>/dev/null || command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -e '.[test]'; \
	else \
	  $(PY) -m pip install -q -c constraints-cpu.txt -e '.[test]'; \
	fi
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chanprune demo

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -p no:cacheprovider tests

# The recovery protocol on zoo, then the README tables (resumable; `$(PY) -m bench.run_all --help`).
bench: $(STAMP)
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
