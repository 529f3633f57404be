#!/bin/sh
# As it ran on 2026-12-07, commit 6fe1f68, torch 2.14.1, from an empty folder on a 2-core AMD EPYC (Zen 4, AVX-512),
# with only light editing and lint alongside: the 100k search of time-100k/ with another seed of the search (its
# sampler, validation split and the finalists' first seed), start to exported model. log.txt is its terminal output
# (with the process's time and memory from /usr/bin/time -v); summary.json and the plots are what --out wrote (best/,
# the exported model, is not committed); REPORT.md was rendered from summary.json after the run, with the fixed
# links to the plots.
archsearch search --time 60m --max-params 100000 --seed 43 --out time-100k-seed43
