#!/usr/bin/env bash
# Stop the daemons scripts/ci/slurm_up.sh started (jobs still queued are cancelled).
set -u
daemons="slurmd slurmctld slurmscriptd munged"
scancel --user="$(id -un)" 2>/dev/null || true
for d in $daemons; do pkill -x "$d" 2>/dev/null || true; done
running() { for d in $daemons; do pgrep -x "$d" >/dev/null && return 0; done; return 1; }
for _ in $(seq 1 10); do
  running || exit 0
  sleep 0.5
done
# A slurmd retrying to register can ignore SIGTERM for minutes.
for d in $daemons; do pkill -9 -x "$d" 2>/dev/null || true; done
sleep 0.5
exit 0
