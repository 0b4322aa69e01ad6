# `make demo` and `make test` work on a fresh machine with only Python and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The PyTorch build to install first. The default is the build this project is developed and
# tested with; set TORCH="torch torchvision" (or a CUDA wheel spec) to choose your own.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test clean

install: $(BIN)/resexp

$(BIN)/resexp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/resexp train model=resnet20 data=synthetic model.width=0.5 trainer.max_iters=400 \
		trainer.eval_every=100 run.root=results/demo/runs

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
