#!/usr/bin/env bash
# The follow-up 100k search, exactly as it ran (docs/guides/searching.md): the committed budget search's screen
# (same space, sampler, seed and fidelity, so the same trials bit for bit) restricted to the 100k budget, with the
# finalist retrained for 50 epochs instead of 30, because the first run's 100k finalist fell 0.0011 short of 0.930.
# It ran at commit 4d060cb (PYTHONPATH pointed at a worktree of that commit), 2026-12-04 08:54-10:42 UTC.
set -u
cd "$(dirname "$0")"
start=$(date +%s)
/work/main/.venv/bin/archsearch search --space /work/main/studies/results/budgets/space.toml \
  --storage sqlite:///budgets-100k.db --study-name budgets-100k \
  --objectives accuracy --sampler tpe --pruner none --n-trials 24 --timeout 1500 \
  --epochs 5 --train-size 15000 --seed 42 \
  --finalists 1 --final-epochs 50 --final-runs 1 --budgets 100000 \
  --threads 2 --json > summary.json 2> search.log
echo "exit $? after $(( $(date +%s) - start )) s" >> search.log
