#!/usr/bin/env bash
# Install and start a single-node SLURM cluster on this machine (as root), for the tests that
# run sweeps through sbatch the way a user's cluster does. Waits until the node is idle.
# Stop it again with scripts/ci/slurm_down.sh. Debian/Ubuntu only (apt-get).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "slurm_up.sh: needs root (it installs packages and starts daemons)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
# Leave 2 GiB to the system; slurmd refuses a node that claims more memory than it has.
mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))

mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge \
  /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
[ -f /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
# munged runs as root here (--force), and checks that its files are root's.
chown -R root:root /etc/munge /var/log/munge /run/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=sparsenet-ci
SlurmctldHost=${host}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x munged >/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
  if [ "$state" = idle ]; then
    echo "slurm_up.sh: node ${host} idle (${cpus} CPUs, ${mem_mb} MB)"
    exit 0
  fi
  sleep 1
done
echo "slurm_up.sh: node did not become idle (state: ${state:-none}); logs in /var/log/slurm" >&2
exit 1
