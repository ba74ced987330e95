# Sovereign Fabric: everything a fresh machine needs is set up from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-long lint protos bench clean setup browser anvil

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Headless Chromium for the wallet dashboard test (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "could not install chromium (apt-get)"; exit 1; }; }

# anvil, a real EVM JSON-RPC node, from the npm package @foundry-rs/anvil.
anvil: node_modules/.bin/anvil
# npm ci installs exactly the committed lock and never rewrites it (npm install would).
node_modules/.bin/anvil: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $@

protos: setup
	$(PY) -m protos.build

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup browser anvil
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist worksteal -m "not long" tests

# Slow integration runs (real SuperLink/SuperNode processes: a node killed mid-round, SecAgg+).
test-long: setup
	$(PY) -m pytest -m long tests

demo: setup
	$(PY) -m demo

bench: setup
	for b in bench/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) node_modules .pytest_cache
