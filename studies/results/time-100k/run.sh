#!/bin/sh
# As it ran on 2026-12-07, commit 6fe1f68, torch 2.14.1, from an empty folder on a 2-core AMD EPYC (Zen 4, AVX-512),
# nothing else running: the whole search, start to exported model. log.txt is its terminal output (with the
# process's time and memory from /usr/bin/time -v); summary.json, REPORT.md and the plots are what --out wrote
# (best/, the exported model, is not committed). REPORT.md's links to the plots were rendered again from
# summary.json after the run: the run's version linked each character of the screen's image count instead.
archsearch search --time 60m --max-params 100000 --out time-100k
