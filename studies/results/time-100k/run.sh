#!/bin/sh
# As it ran on 2026-12-08, commit 3fc7b82, torch 2.14.1, from an empty folder on a 2-core AMD EPYC (Zen 4, AVX-512),
# with only light editing alongside: the whole search, start to exported model. log.txt is its terminal output (with
# the process's time and memory from /usr/bin/time -v); summary.json, REPORT.md and the plots are what --out wrote
# (best/, the exported model, is not committed).
# The same command at commit 6fe1f68, before the fast space fitted its widths to the budget, reached 80,290
# parameters, val 0.9398 ± 0.0015, test 0.9363 ± 0.0006 in 56 minutes (the run is in this folder's history).
archsearch search --time 60m --max-params 100000 --out time-100k
