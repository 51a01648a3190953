#!/usr/bin/env bash
# Stop the daemons scripts/ci/slurm_up.sh started (jobs still queued are cancelled).
set -u
scancel --user="$(id -un)" 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
pkill -x munged 2>/dev/null || true
exit 0
