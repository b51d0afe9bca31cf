# The two commands README starts with: `make quickstart` (the main job) and `make test`.
# Both run the setup step once; the stamp makes a second run reinstall nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup quickstart test test-all env clean-venv gpu-check gpu-wheels

$(STAMP): scripts/setup_env.sh setup.py
	LAMBDA_DET_VENV=$(VENV) bash scripts/setup_env.sh
	@touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(PY) tools/quickstart.py

# CI (CI=true) also runs the tests marked slow; locally `make test-all` does.
test: $(STAMP)
	$(PY) -m pytest tests $(if $(filter true,$(CI)),-m "slow or not slow",)

test-all: $(STAMP)
	$(PY) -m pytest tests -m "slow or not slow"

env: $(STAMP)
	$(PY) -m lambda_det.collect_env

clean-venv:
	rm -rf $(VENV) $(VENV).setup.log

# On a lent GPU machine (docs/gpu.md): CUDA tests, layer and detector timings, a short toy training,
# <= 8 minutes, results in $$OUT when set. `bash scripts/gpu_check.sh --dry-run` rehearses it on a CPU.
gpu-check:
	bash scripts/gpu_check.sh

# The wheels that GPU machine lacks (Detectron2 and its config/IO stack, pycocotools) into .gpu_wheels/,
# from the package index: run where there is network, then carry .gpu_wheels to the GPU machine.
gpu-wheels:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/gpu_wheels.py gather .gpu_wheels
