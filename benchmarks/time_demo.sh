#!/usr/bin/env bash
# Time `make demo` as a newcomer runs it: a fresh clone of this checkout's HEAD, setup included.
# Prints the date, the machine, the wall time and the quickstart's closing lines (AP). Run it on
# an idle machine (`uptime`) and copy its output into README.md whenever the quickstart changes.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/detforge"
cd "$work/detforge"
echo "date: $(date -u +%F) commit: $(git rev-parse --short HEAD)"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
make demo > demo.log 2>&1
echo "make demo from a fresh clone: $(( $(date +%s) - start )) s"
grep -A1 "quickstart finished" demo.log
