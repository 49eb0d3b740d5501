# The README's two commands:  `make demo` (a video from the bundled model)  and  `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := .make/installed

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	@mkdir -p .make
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	kinema generate "a red ball bounces on the floor" -o ball.mp4

test: $(STAMP)
	@if [ -x scripts/ci-services.sh ]; then scripts/ci-services.sh; fi
	$(PYTHON) -m pytest tests

test-fast: $(STAMP)
	$(PYTHON) -m pytest tests -m "not slow"

bench: $(STAMP)
	$(PYTHON) benchmarks/engine.py
	$(PYTHON) benchmarks/generate.py

clean:
	rm -rf .make build *.egg-info .pytest_cache
