# make help lists the targets. Every target sets up .venv first if it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.DEFAULT_GOAL := help

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: help setup train lint test test-slurm test-all data sweep-mnist sweep-cifar sweep-resnet paper report bench bench-stacked bench-startup gpu-check tensorboard clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install the project (torch 2.14.1, CPU or GPU)

train: $(VENV)/.installed  ## the main job: train mnist_fnn on the embedded MNIST subset
	$(PY) src/train.py $(ARGS)

lint: $(VENV)/.installed  ## ruff check + ruff format --check (settings: pyproject.toml [tool.ruff]); `ruff format src tests benchmarks` fixes the format
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: $(VENV)/.installed  ## the default test suite (minutes on 2 cores)
	$(PY) -m pytest $(ARGS)

test-slurm: $(VENV)/.installed  ## launcher=slurm against a real SLURM started here (root; ~2 min, installs slurm-wlm + munge)
	$(PY) -m pytest -m slurm -rs $(ARGS)

test-all: $(VENV)/.installed  ## every test, the slow and SLURM ones too
	$(PY) -m pytest -m "" $(ARGS)

data: $(VENV)/.installed  ## download + verify MNIST and CIFAR-10 into data/ (a no-op when there); on a cluster: on the login node
	$(PY) src/prepare_data.py $(ARGS)

MNIST_FIGS  := fig03_mnist_fnn fig04_mnist_fnn_bias_scale fig05_mnist_cnn fig06_mnist_cnn_bias_scale fig07_zero_mnist
CIFAR_FIGS  := fig08_cifar_fnn fig09_cifar_cnn fig10_zero_cifar
RESNET_FIGS := fig11_resnet50
# Every figure's sweep runs even if one has failed runs; the target fails at the end if any did.
# Exit code 2 (bad input, data missing, a failure every run shares) would repeat for the
# next figure too: stop there.
# The small models' sweeps train stacked (-m's default launcher: the runs of a figure that
# share a model train as one); ARGS="launcher=parallel" (or slurm, ...) chooses another.
# ResNet-50 runs one by one: one ResNet-50 already fills a GPU, so stacking has little to
# gain there (benchmarks/gpu_bench.py --stacked measures it; ARGS=launcher=stacked to try).
ONE_BY_ONE = $(if $(findstring launcher=,$(ARGS)),,launcher=basic)
define sweep
	@status=0; for e in $(1); do $(PY) src/train.py -m experiment=$$e $(2) $(ARGS); rc=$$?; \
	  if [ $$rc -eq 2 ]; then exit 2; elif [ $$rc -ne 0 ]; then status=1; fi; done; exit $$status
endef

sweep-mnist: $(VENV)/.installed  ## Figures 3-7: 135 runs on MNIST, stacked (`make data` first; ARGS="launcher=parallel" etc.)
	$(call sweep,$(MNIST_FIGS))

sweep-cifar: $(VENV)/.installed  ## Figures 8-10: 75 runs on CIFAR-10, stacked (`make data` first)
	$(call sweep,$(CIFAR_FIGS))

sweep-resnet: $(VENV)/.installed  ## Figure 11: 15 ResNet-50 runs on CIFAR-10, 30 epochs each, one by one (`make data` first)
	$(call sweep,$(RESNET_FIGS),$(ONE_BY_ONE))

paper: $(VENV)/.installed  ## every figure (3-11), then the report (`make data` first)
	$(call sweep,$(MNIST_FIGS) $(CIFAR_FIGS))
	$(call sweep,$(RESNET_FIGS),$(ONE_BY_ONE))
	$(PY) src/report.py outputs/sweeps -o outputs/report

report: $(VENV)/.installed  ## figures + table (95% CIs) of every sweep under outputs/sweeps
	$(PY) src/report.py outputs/sweeps -o outputs/report

bench: $(VENV)/.installed  ## seconds/epoch: this project vs a bare loop vs DataLoader+Lightning vs the FLOP bound; sweep runs/min (~10 min)
	$(PY) benchmarks/bench.py --sweep --floor $(ARGS)

bench-stacked: $(VENV)/.installed  ## the 15-run seed x init sweep: stacked vs one at a time vs 15 bare loops (CPU: ~15 min)
	$(PY) benchmarks/stacked_bench.py --cli $(ARGS)

bench-startup: $(VENV)/.installed  ## time to first result: --help, a one-epoch run, the README's stacked sweep, the dataset load (~3 min; ARGS="--compare REF")
	$(PY) benchmarks/startup_bench.py $(ARGS)

gpu-check: $(VENV)/.installed  ## on a GPU machine: stacked sweeps (probe's sizes), one run vs bare, `make paper`'s hours per speed setting -> gpu-check.md (~8 min on an H200, estimated)
	$(PY) benchmarks/gpu_check.py -o gpu-check.md $(ARGS)

tensorboard: $(VENV)/.installed  ## browse every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean:  ## delete outputs/ (all runs!) and caches, keep .venv
	rm -rf outputs/runs outputs/sweeps .pytest_cache
