# The two set-up commands of the README: each installs everything it needs on a fresh machine first.
.PHONY: setup reproduce test

setup:
	.ci/setup

# The main job: a first look at the report reproduction (all 17 rows, shortened protocol).
reproduce: setup
	.venv/bin/archsearch train mlp:128-relu --epochs 1

# The whole test suite, slow end-to-end tests included.
test: setup
	.venv/bin/python -m pytest -q
