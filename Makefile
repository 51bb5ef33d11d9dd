# talkcurate: `make demo` runs the pipeline on the example footage; `make test` runs the test suite (as CI
# does); `make test-fast` the fast tier (stage logic, formats, config, report on small inputs; no Ray).
# Both install what is missing first (ffmpeg with apt, the package into .venv).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
SHARED ?= $(abspath ../shared)
export CURATION_FOOTAGE ?= $(SHARED)/footage
export CURATION_WEIGHTS ?= $(SHARED)/weights
DEMO_OUT ?= demo-out
FREEZE := $(SHARED)/deps/python311-proven-freeze.txt
PYTEST_ARGS ?=

.PHONY: demo test test-fast install ffmpeg clean

ffmpeg:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  echo "installing ffmpeg with apt"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip >/dev/null
	@if [ -f "$(FREEZE)" ]; then \
	  echo "installing the proven dependency set ($(FREEZE))"; \
	  $(VENV)/bin/python -m pip install -q -r "$(FREEZE)"; fi
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

install: ffmpeg $(VENV)/.installed

demo: install
	@echo "running the pipeline on $(CURATION_FOOTAGE) with local Ray -> $(DEMO_OUT)"
	time $(VENV)/bin/curation run --input "$(CURATION_FOOTAGE)" --output "$(DEMO_OUT)"
	$(VENV)/bin/curation report "$(DEMO_OUT)"
	@echo "shards: $(DEMO_OUT)/shards   index: $(DEMO_OUT)/index.parquet   audit: $(DEMO_OUT)/audit   report: $(DEMO_OUT)/report.html"

test: install
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/python -m pytest tests -m "not slow" -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
