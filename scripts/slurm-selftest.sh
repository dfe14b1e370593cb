#!/usr/bin/env bash
# The sharded sweep on a real Slurm: installs Slurm and MUNGE from Debian's packages if they
# are missing, starts a one-node cluster on this machine (munged, slurmctld, slurmd, all
# under a temporary directory), submits examples/sweeps/directmap.yaml as a 4-task array job,
# waits for it, merges the shards, compares the table with a local run byte for byte, stops
# what it started and exits non-zero on any difference. Run as root on a Debian machine:
#   scripts/slurm-selftest.sh [COCOMEM] [MATRIX]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cocomem=$(realpath "${1:-$root/.build/release/cocomem}")
matrix=$(realpath "${2:-$root/examples/sweeps/directmap.yaml}")
[ -x "$cocomem" ] || { echo "no cocomem at $cocomem: swift build -c release first" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge >/dev/null
fi

dir=$(mktemp -d /tmp/cocomem-slurm.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# MUNGE, with its own key and socket.
mkdir -p "$dir/munge"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
pids+=("$(cat "$dir/munge/munged.pid")")

host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$dir/state" "$dir/spool" "$dir/out"
cat > "$dir/slurm.conf" <<CONF
ClusterName=cocomem
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
sleep 1
pids+=("$(cat "$dir/slurmctld.pid")")
slurmd -f "$SLURM_CONF"
sleep 1
pids+=("$(cat "$dir/slurmd.pid")")
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 1
done
sinfo

echo "submitting a 4-task array job"
COCOMEM=$cocomem sbatch --wait --array=0-3 --cpus-per-task=1 --chdir="$dir" \
  --output="$dir/task-%a.log" "$root/scripts/sweep.sbatch" "$matrix" "$dir/out"
ls -l "$dir/out"

"$cocomem" sweep "$matrix" --out "$dir/local.jsonl" --quiet
"$cocomem" merge "$dir/local.jsonl" > "$dir/local.txt"
"$cocomem" merge "$dir"/out/shard-*.jsonl > "$dir/slurm.txt"
if cmp "$dir/local.txt" "$dir/slurm.txt"; then
  echo "slurm selftest: $(wc -l < "$dir/local.jsonl") runs in 4 array tasks merge to the local table byte for byte"
else
  diff "$dir/local.txt" "$dir/slurm.txt" | head -20
  echo "slurm selftest: FAILED" >&2
  exit 1
fi
