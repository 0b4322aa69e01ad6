# `make demo` and `make test` work on a fresh machine with only Python and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The PyTorch build to install first. The default is the build this project is developed and
# tested with; set TORCH="torch torchvision" (or a CUDA wheel spec) to choose your own.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo analysis test clean

install: $(BIN)/resexp

$(BIN)/resexp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Where `resexp sweep demo` puts its runs (run.root: $RESEXP_RUNS or runs/), so that after the demo
# the same command, or its --dry-run, finds them.
DEMO := $(or $(RESEXP_RUNS),runs)/sweeps/demo

# The degradation demo: plain-20/56 and ResNet-20/56 on the synthetic set, seeds 0-2
# (configs/sweep/demo.yaml), its figure with seed bands, Table 6 and the reproduction report,
# whose two verdicts it prints.
demo: install
	$(BIN)/resexp sweep demo
	$(BIN)/resexp figure $(DEMO) -o results/demo/figure6.png
	$(BIN)/resexp table $(DEMO) -o results/demo
	$(BIN)/resexp report $(DEMO) -o results/demo/report
	@grep -E '^\| \((a|b)\) ' results/demo/report/report.md | awk -F'|' '{print "claim" $$2 "->" $$(NF-1)}'
	$(BIN)/python scripts/check_demo.py $(DEMO)

# Why residuals work, measured on the demo's trained runs (results/analysis/README.md).
analysis: install
	$(BIN)/resexp responses $(DEMO) -o results/analysis
	$(BIN)/resexp lesion $(DEMO) -o results/analysis --k 1,2,4,8 --draws 5 --limit 1000
	$(BIN)/resexp landscape $(DEMO)/model=plain56,seed=0 $(DEMO)/model=resnet56,seed=0 -o results/analysis --grid 11 --limit 500
	$(BIN)/resexp gradflow $(DEMO)/model=plain20,seed=0 $(DEMO)/model=resnet20,seed=0 $(DEMO)/model=plain56,seed=0 $(DEMO)/model=resnet56,seed=0 \
		--shattered -o results/analysis
	$(BIN)/resexp eval $(DEMO)/model=resnet56,seed=0

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
