#!/bin/sh
# As it ran on 2026-12-07, commit 8f2cbd0, torch 2.14.1, from an empty folder on a 2-core AMD EPYC (Zen 4, AVX-512),
# with only light editing alongside: the whole search, start to exported model. log.txt is its terminal output (with the
# process's time and memory from /usr/bin/time -v); summary.json, REPORT.md and the plots are what --out wrote
# (best/, the exported model, is not committed). The same command at commit d986194 (before test-time flips were
# always on and before time left at the epoch cap went to more finalists) reached test 0.9126 ± 0.0032 with
# cnn:9c3p1-bn-p2-18ds3p1-bn-18ds3s2p1-bn-fc-relu (9,730 parameters) in 42 minutes; that run is in this folder's
# git history.
archsearch search --time 60m --max-params 10000 --out time-10k
