# The two commands a newcomer needs (see README.md):
#   make demo   install, then train a subagent on the embedded default (tiny model, CPU)
#   make test   install, then run the test suite
.PHONY: install demo test bench
PY := .venv/bin/python

install:
	bash scripts/install.sh

demo: install
	bash scripts/demo.sh

test: install
	bash scripts/test.sh

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
