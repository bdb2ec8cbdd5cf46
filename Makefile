# medseg: every target builds the virtual environment in .venv first (once).
# TORCH_SPEC / TORCH_INDEX choose the PyTorch build; the default is the CPU wheel.
#   GPU example: make train TORCH_SPEC="torch==2.9.1" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV := .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TASK ?= liver

.PHONY: venv browser train test test-fast lint-imports lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

train: venv
	$(VENV)/bin/python -m medseg.train $(TASK)

# headless Chromium + ChromeDriver from Debian's packages for the browser tests (MLflow UI, medseg.serve page);
# best effort: where they cannot be installed (no apt, not root) those tests skip and say why
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	            || echo "make: chromium could not be installed; the browser tests will be skipped"; \
	    else echo "make: no chromium (needs root and apt-get); the browser tests will be skipped"; fi; \
	fi

# everything (CI): the layer contract and the whole suite; both always run, either failing fails the target
test: venv browser
	@status=0; $(VENV)/bin/lint-imports || status=1; $(VENV)/bin/python -m pytest -q || status=1; exit $$status

# the suite without trainings, servers and subprocess runs (pytest marker `slow`)
test-fast: venv
	$(VENV)/bin/python -m pytest -q -m "not slow"

# the import layers of medseg (setup.cfg [importlinter]): a lower layer never imports a higher one
lint-imports: venv
	$(VENV)/bin/lint-imports

lint: venv
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) runs mlflow.db mlruns
