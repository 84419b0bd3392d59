#!/usr/bin/env bash
# A single-node SLURM on this machine, for the tests marked `slurm` (tests/test_slurm.py).
#   scripts/slurm_testbed.sh start [DIR]   install slurm-wlm + munge if missing (Debian, as root), write DIR/slurm.conf,
#                                          start munged, slurmctld, slurmd, wait until the node is idle, and write
#                                          DIR/env (export SLURM_CONF=...) for the tests to source
#   scripts/slurm_testbed.sh stop [DIR]    stop the daemons started by `start`, by their pids
# DIR defaults to /tmp/ect-slurm. This host is controller and only node, with its real CPU count and memory, and
# partitions `cpu` (default) and `gpu` as workflow/profiles/slurm expects. Processes are tracked by cgroups, as on
# production clusters; only where the cgroup plugin cannot start here is proctrack/linuxproc used, with a warning.
set -euo pipefail

action=${1:?usage: $0 start|stop [DIR]}
DIR=$(realpath -m "${2:-${ECT_SLURM_DIR:-/tmp/ect-slurm}}")

stop_pidfile() {  # stop_pidfile FILE: TERM the daemon whose pid FILE holds, wait for it, KILL if it lingers
    local file=$1 pid
    [[ -s $file ]] || return 0
    pid=$(<"$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$DIR/munged.pid"
    local link
    for link in /etc/slurm/slurm.conf /etc/slurm/cgroup.conf; do
        if [[ -L $link && $(readlink "$link") == "$DIR"/* ]]; then rm -f "$link"; fi
    done
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi
[[ $action == start ]] || { echo "usage: $0 start|stop [DIR]" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "slurm_testbed: slurm-wlm and munge are not installed (needs root and apt-get to install them)" >&2
        exit 1
    fi
    echo "slurm_testbed: installing slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[[ $(id -u) == 0 ]] || { echo "slurm_testbed: the daemons need root" >&2; exit 1; }

stop  # a previous start's daemons, if any
mkdir -p "$DIR/state" "$DIR/spool" /run/munge
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
port=${ECT_SLURM_PORT:-6917}

write_conf() {  # write_conf PROCTRACK
    cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/slurm_testbed.sh: a single-node test cluster without accounting.
ClusterName=ecttest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=$1
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=300
KillWait=30
InactiveLimit=0
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/cgroup.conf" <<EOF
CgroupPlugin=autodetect
CgroupAutomount=yes
EOF
}

# Jobs see SLURM's default configuration path only (the SLURM executor's job step drops SLURM_CONF before calling
# srun), so the configuration is linked there, unless one not written by this script is there already.
SYSTEM_CONF=/etc/slurm/slurm.conf
if [[ -e $SYSTEM_CONF ]] && ! grep -q "^# Written by scripts/slurm_testbed.sh" "$SYSTEM_CONF"; then
    echo "slurm_testbed: $SYSTEM_CONF exists and was not written by this script; not touching it" >&2
    exit 1
fi
mkdir -p /etc/slurm
ln -sfn "$DIR/slurm.conf" "$SYSTEM_CONF"
ln -sfn "$DIR/cgroup.conf" /etc/slurm/cgroup.conf
export SLURM_CONF=$DIR/slurm.conf
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$DIR/env"

munged --force --pid-file="$DIR/munged.pid" --socket=/run/munge/munge.socket.2 2>"$DIR/munged.err" \
    || { echo "slurm_testbed: munged did not start: $(tail -1 "$DIR/munged.err")" >&2; exit 1; }

start_daemons() {  # start_daemons PROCTRACK: 0 when the node is idle within 60 s
    write_conf "$1"
    slurmctld -i
    slurmd
    for _ in $(seq 60); do
        if [[ $(sinfo -h -n "$host" -o %T 2>/dev/null | sort -u) == idle ]]; then
            return 0
        fi
        sleep 1
    done
    return 1
}

if start_daemons proctrack/cgroup; then
    proctrack=proctrack/cgroup
else
    echo "slurm_testbed: WARNING: slurmd does not run with proctrack/cgroup here ($(grep -i -m1 'error' \
"$DIR/slurmd.log" || echo 'no error logged')); falling back to proctrack/linuxproc, which signals every process \
of a step, unlike most production clusters" >&2
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    if start_daemons proctrack/linuxproc; then
        proctrack=proctrack/linuxproc
    else
        echo "slurm_testbed: the node did not become idle; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
        stop
        exit 1
    fi
fi
echo "slurm_testbed: $host idle ($cpus CPUs, $mem_mb MB, $proctrack); source $DIR/env to use it" >&2
