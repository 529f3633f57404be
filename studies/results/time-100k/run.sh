#!/bin/sh
# As it ran on 2026-12-07, commit e9ee1e4, torch 2.14.1, from an empty folder on a 2-core AMD EPYC (Zen 4, AVX-512),
# with only light editing and a few short low-priority unit tests alongside: the whole search, start to exported
# model. log.txt is its terminal output (with the process's time and memory from /usr/bin/time -v); summary.json,
# REPORT.md and the plots are what --out wrote (best/, the exported model, is not committed).
archsearch search --time 60m --max-params 100000 --out time-100k
