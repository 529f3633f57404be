# The two set-up commands of the README: each installs what it needs on a fresh machine first, and no more.
.PHONY: setup setup-run reproduce test

setup-run:
	.ci/setup run

setup:
	.ci/setup dev

# The main job: a first look at the report reproduction (all 17 rows, 2 runs of 2 epochs; a few minutes),
# written to results/quick/. The full protocol: .venv/bin/archsearch reproduce --out results/full
reproduce: setup-run
	.venv/bin/archsearch reproduce --quick --out results/quick

# The whole test suite, slow end-to-end tests included.
test: setup
	.venv/bin/python -m pytest -q
