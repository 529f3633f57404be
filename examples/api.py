"""The Python API without the CLI: train one architecture, then run a small search in a custom space.

.venv/bin/python examples/api.py
"""

from __future__ import annotations

from pathlib import Path

import optuna

from archsearch.core.protocol import Protocol
from archsearch.data import load_dataset
from archsearch.engine import train
from archsearch.models import parse_spec
from archsearch.study.search import SearchConfig, open_search_study, run_search, search_summary
from archsearch.study.spaces import load_space

# 1. The trainer alone: a spec, seeds (trained fused), a protocol, data tensors -> plain data.
data = load_dataset()
result = train(parse_spec("cnn:6c5-p2-16c5-p2-fc128,64"), seeds=[42, 43], protocol=Protocol(epochs=1), data=data)
for run in result.runs:
    print(run.seed, round(run.metrics["test"]["accuracy"], 4))

# 2. A search: the space says what to try, the same trainer trains it, Optuna decides.
space = load_space(str(Path(__file__).with_name("small_cnn.toml")))
cfg = SearchConfig(space="small_cnn", n_trials=4, epochs=1)
study = open_search_study(optuna.storages.InMemoryStorage(), "example", space, cfg)
run_search(study, space, cfg, load_dataset(val_size=cfg.val_size, split_seed=cfg.seed))
best = search_summary(study)["best"]
print(f"best: {best['spec']} ({best['params']:,} params) val {best['val_acc']:.4f} test {best['test_acc']:.4f}")
