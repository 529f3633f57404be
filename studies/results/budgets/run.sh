#!/usr/bin/env bash
# The committed budget search, exactly as it ran (docs/guides/searching.md: "Searching to a budget").
set -u
cd "$(dirname "$0")"
start=$(date +%s)
/work/main/.venv/bin/archsearch search --space /work/main/studies/results/budgets/space.toml \
  --storage sqlite:///budgets.db --study-name budgets \
  --objectives accuracy --sampler tpe --pruner none --n-trials 24 --timeout 1800 \
  --epochs 5 --train-size 15000 --seed 42 \
  --finalists 1 --final-epochs 30 --final-runs 1 --budgets 10000,44374,100000 \
  --threads 2 --json > summary.json 2> search.log
echo "exit $? after $(( $(date +%s) - start )) s" >> search.log
