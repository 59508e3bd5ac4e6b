# One command to set up and run, one to set up and test (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stride-installed

.PHONY: setup chromium run test ui mlflow-ui results clean

# torch comes first with pip (the CPU build on local disk); the rest with uv, which
# resolves this stack in about a minute where pip 23 needs fifteen.
$(STAMP): pyproject.toml resources/uv-excludes.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv
	$(VENV)/bin/uv pip install -q --python $(PY) --excludes resources/uv-excludes.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) chromium

# headless Chromium renders the HTML reports in tests/test_html_report.py (installed once, quietly)
chromium:
	@command -v chromium >/dev/null || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(VENV)/bin/stride run

test: setup
	$(PY) -m pytest -q

ui: setup
	$(VENV)/bin/stride ui

# every benchmark's full protocol, then benchmarks/RESULTS.md (hours on 2 cores; resumable)
results: setup
	$(PY) benchmarks/results.py --work .stride/results

mlflow-ui: setup
	$(VENV)/bin/stride mlflow-ui

clean:
	rm -rf .stride
