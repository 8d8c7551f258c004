# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision versions known to install from this machine's local wheels;
# pyproject.toml declares looser ranges for users elsewhere.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# ExecuTorch (the [mobile] extra) at the version that installs beside that torch.
EXECUTORCH_PIN := executorch==1.5.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test lint format clean

$(VENV)/.installed: pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[dev,mobile,timm]' $(TORCH_PINS) $(EXECUTORCH_PIN)
	touch $@

data:
	@if [ -z "$$DEEPREBIRTH_DATA" ] && [ ! -e $(FASHION_MNIST)/t10k-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing the Debian package dataset-fashion-mnist"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "warning: could not install dataset-fashion-mnist; tests that need the real data will skip"; \
	  else \
	    echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or set DEEPREBIRTH_DATA"; \
	  fi; \
	fi

install: $(VENV)/.installed data

demo: install
	$(VENV)/bin/deeprebirth demo

test: install
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
