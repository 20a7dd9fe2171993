#!/usr/bin/env bash
# The shipped Slurm files run for real on a one-node Slurm cluster of this script's own: Debian's
# slurmctld, slurmd and munge (installed where missing), a private munged (own key and socket), a
# private PostgreSQL (initdb on a spare port, as user postgres). scripts/slurm_check.py submits
# slurm/init.sbatch and a 3-task slurm/worker.sbatch array on the quick pipeline (longer epochs,
# so a trial lasts seconds), sends SIGTERM to one task while it trains and SIGKILL to another,
# and checks the outcome. Every daemon it started is stopped by PID at the end.
# Skips (exit 0, one line) only where the Slurm packages cannot be installed; under CI (CI=true)
# that is a failure (exit 1, one line) unless HPO_ALLOW_SLURM_SKIP=1 says this CI host cannot have them.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "== slurm check: $*"; }
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    say "installing Debian's slurmctld slurmd slurm-client munge"
    if ! { $SUDO apt-get install -y -qq slurmctld slurmd slurm-client munge >/tmp/hpo-slurm-apt.log 2>&1 \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq slurmctld slurmd slurm-client munge >>/tmp/hpo-slurm-apt.log 2>&1; }; }; then
        why="the Slurm packages cannot be installed here ($(tail -n 1 /tmp/hpo-slurm-apt.log 2>/dev/null || true))"
        if [ "${CI:-}" = "true" ] && [ "${HPO_ALLOW_SLURM_SKIP:-}" != "1" ]; then
            echo "FAIL slurm check: $why; CI=true requires it (HPO_ALLOW_SLURM_SKIP=1 where the CI host cannot have them)"
            exit 1
        fi
        echo "SKIP slurm check: $why"
        exit 0
    fi
fi

root=$(mktemp -d /tmp/hpo-slurm-XXXXXX)
chmod 755 "$root"
pids=()
cleanup() {
    status=$?
    for pidfile in "$root"/slurmd.pid "$root"/slurmctld.pid "$root"/munge/munged.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -f "$root/pg/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$root/pg" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    if [ "$status" -ne 0 ]; then
        # the daemons' complaints first, the workers' logs last (CI shows the end of the output)
        for log in "$root"/log/slurmctld.log "$root"/log/slurmd.log; do
            [ -f "$log" ] && { echo "--- $log (errors)"; grep -iE "error|fail|requeue" "$log" | tail -n 15; }
        done
        for log in "$root"/log/init-*.log "$root"/log/worker-*.log; do
            [ -f "$log" ] && { echo "--- $log"; tail -n 12 "$log" | cut -c1-240; }
        done
    fi
    if [ "$status" -ne 0 ] && [ -n "${HPO_CHECK_KEEP:-}" ]; then
        echo "kept $root (HPO_CHECK_KEEP)"
    else
        rm -rf "$root"
    fi
    exit "$status"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

say "private munged"
mkdir -p "$root/munge" "$root/log"
chown munge:munge "$root/munge"
chmod 755 "$root/munge"  # the socket directory: execute for all
dd if=/dev/urandom of="$root/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$root/munge/munge.key"
chmod 400 "$root/munge/munge.key"
runuser -u munge -- munged --socket="$root/munge/munge.socket" --key-file="$root/munge/munge.key" \
    --pid-file="$root/munge/munged.pid" --log-file="$root/munge/munged.log" --seed-file="$root/munge/munged.seed"

say "private PostgreSQL"
PG_BIN=$(pg_config --bindir)
mkdir -p "$root/pg" && chown postgres "$root/pg" && chmod 700 "$root/pg"
touch "$root/log/postgres.log" && chown postgres "$root/log/postgres.log"
runuser -u postgres -- "$PG_BIN/initdb" -D "$root/pg" -A trust -U postgres >/dev/null
pg_port=$(free_port)
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$root/pg" -l "$root/log/postgres.log" \
    -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1" -w start >/dev/null
runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" hpo

say "slurmctld and slurmd (one node, 127.0.0.1)"
host=$(hostname -s)
mkdir -p "$root/state" "$root/spool"
cat >"$root/slurm.conf" <<EOF
ClusterName=hpocheck
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$root/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$root/state
SlurmdSpoolDir=$root/spool
SlurmctldPidFile=$root/slurmctld.pid
SlurmdPidFile=$root/slurmd.pid
SlurmctldLogFile=$root/log/slurmctld.log
SlurmdLogFile=$root/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=600
KillWait=30
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$root/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 30); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %t | grep -q idle || { echo "FAIL: the Slurm node did not come up"; exit 1; }
say "cluster up after $(( $(date +%s) - start )) s"

export HPO_CHECK_ROOT=$root
export HPO_STORAGE="postgresql+psycopg://postgres@127.0.0.1:$pg_port/hpo"
export HPO=$(dirname "$PYTHON")/hpo
"$PYTHON" scripts/slurm_check.py
say "passed in $(( $(date +%s) - start )) s"
