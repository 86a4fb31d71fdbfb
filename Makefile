# Two commands for a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: install test conformance demo bench package deploy clean

# The training source's requirements as the training job installs them: without smdebug's stale
# protobuf pin (training/requirements.txt). '+' installs even under `make --dry-run`, which
# `make deploy --dry-run` needs on a fresh clone.
$(STAMP): requirements.txt requirements-dev.txt training/requirements.txt
	+test -x $(PY) || $(PYTHON) -m venv $(VENV)
	+$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	+PIP_NO_DEPS=true $(PY) -m pip install -q --disable-pip-version-check -r training/requirements.txt
	+touch $(STAMP)

# The browser the console's tests drive: Debian's Chromium, under Playwright (`playwright install`
# would download a browser of its own). CI runs as root with no stdin; elsewhere through sudo.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
$(CHROMIUM):
	$(APT_INSTALL) chromium || { $(SUDO) apt-get update && $(APT_INSTALL) chromium; }

install: $(STAMP) $(CHROMIUM)

test: install
	$(PY) -m pytest

# The product in its SageMaker images' environments (Python 3.12 needed; builds them once, ~12 min).
conformance: install
	$(PY) -m conformance

# `make demo KEEP_UP=1` leaves the stack up afterwards (Ctrl-C stops it) to look around in the console.
demo: install
	$(PY) -m local_aws demo$(if $(filter 1 true yes,$(KEEP_UP)), --keep-up)

bench: install
	$(PY) bench/train_throughput.py

clean:
	rm -rf out demo-output .pytest_cache

# The deployable template and Lambda zip for a stage: `make package STAGE=prod` (default dev).
STAGE ?= dev
package: install
	$(PY) -m infra.package --stage $(STAGE) build/package/$(STAGE)

# The stage to AWS (python -m infra.deploy): `make deploy STAGE=dev [REGION=eu-west-1] [--dry-run]`.
# The dry run prints every step and request and calls no AWS API (no credentials needed). make's
# own --dry-run (-n) would only echo this recipe: '+' runs it, as the deployer's dry run. DRY_RUN=1
# asks for the same.
MAKE_DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))
deploy: install
	+$(PY) -m infra.deploy --stage $(STAGE)$(if $(REGION), --region $(REGION))$(if $(MAKE_DRY_RUN)$(filter 1 true yes,$(DRY_RUN)), --dry-run)
