# make demo : set up, then fetch SmolLM2, convert it, generate text, print tokens/s
# make test : set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.larosa-setup

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup.sh $(wildcard setup.py c_kernels/*.c c_kernels/*.h c_kernels/*.py)
	sh tools/setup.sh
	touch $@

demo: setup
	$(PY) -m larosa.tools.demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf build *.egg-info $(STAMP)
