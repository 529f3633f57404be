# The two set-up commands of the README: each installs everything it needs on a fresh machine first.
.PHONY: setup reproduce test

setup:
	.ci/setup

# The main job: a first look at the report reproduction (all 17 rows, 2 runs of 2 epochs; a few minutes),
# written to results/quick/. The full protocol: .venv/bin/archsearch reproduce --out results/full
reproduce: setup
	.venv/bin/archsearch reproduce --quick --out results/quick

# The whole test suite, slow end-to-end tests included.
test: setup
	.venv/bin/python -m pytest -q
