#!/usr/bin/env bash
# slurm_local.sh - a real, throwaway one-node SLURM cluster on this machine.
#
# Why: to run a Hydra `hydra/launcher=submitit_slurm` sweep end to end (sbatch, squeue,
# srun inside the job, job arrays) without access to a real cluster. The node is this
# machine; the partition is `debug`; several 1-CPU jobs can run at once.
#
# Usage (as root, because it installs packages, runs munged as the munge user and runs
# the SLURM daemons as root):
#   scripts/slurm_local.sh start    # install if needed, configure, start, check; idempotent
#   scripts/slurm_local.sh status   # daemons, sinfo, squeue (exit 0 if up, 3 if not)
#   scripts/slurm_local.sh stop     # cancel jobs, stop the daemons this script started
# After `start`, run the `export SLURM_CONF=...` line it prints in every shell that uses
# sinfo/sbatch/srun (sbatch passes it on to the jobs, so srun inside a job finds it too).
#
# Environment:
#   SLURM_LOCAL_DIR        where config, state, spool, pid and log files go (/tmp/resexp-slurm)
#   SLURM_LOCAL_PARTITION  partition name (debug)
#   SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_SLURMD_PORT  TCP ports (6817 / 6818, SLURM's defaults)
#
# Nothing is written under /etc except: the munge key when none exists (munge cannot work
# without one), and a symlink /etc/slurm/slurm.conf -> our config when no slurm.conf exists
# there (so that plain `sinfo` works too); an existing /etc/slurm/slurm.conf is never touched.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/resexp-slurm}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
CTLD_PORT="${SLURM_LOCAL_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_LOCAL_SLURMD_PORT:-6818}"
CONF="$DIR/etc/slurm.conf"
RUN="$DIR/run"
LOG="$DIR/log"
NODE="$(hostname -s)"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
# Marker: present only when this script started munged, so `stop` never kills a munged
# that belongs to the system (or to someone else).
MUNGED_OURS="$RUN/munged.ours"

# The clients (sinfo, srun, ...) read SLURM_CONF; the daemons also get `-f "$CONF"`.
export SLURM_CONF="$CONF"

say() { echo "[slurm_local] $*"; }
die() { echo "[slurm_local] ERROR: $*" >&2; exit 1; }

need_root() {
    [[ "$(id -u)" == 0 ]] || die "'$1' must run as root (it installs packages and starts daemons); try: sudo $0 $1"
}

# True when pid file $1 names a live process whose command is $2. Checking the name guards
# against a stale pid file whose pid the kernel has since given to something else.
pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }
no_active_jobs() { [[ -z "$(timeout 10 squeue -h -t R,CG -o %A 2>/dev/null)" ]]; }

# Wait up to $1 seconds for the command "${@:2}" to succeed.
wait_for() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

# Show the end of the daemon logs, so a failed start says why.
show_logs() {
    local f
    for f in "$LOG/slurmctld.log" "$LOG/slurmd.log" /var/log/munge/munged.log; do
        [[ -s "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 15 "$f" >&2
    done
}

install_packages() {
    local missing=()
    local cmd
    for cmd in munged munge unmunge slurmctld slurmd sinfo srun sbatch squeue scontrol scancel; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    say "missing ${missing[*]}: installing Debian's slurm-wlm and munge (apt-get) ..."
    command -v apt-get >/dev/null || die "no apt-get here; install SLURM (slurmctld, slurmd, client) and munge by hand"
    # Refresh the lists first: on a fresh machine they are empty or stale and the install fails.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # --no-install-recommends: the recommended extra plugins (rrd, hdf5, ...) are not needed here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    say "installed: $(slurmctld -V)"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        say "munged already running and working; using it"
        return 0
    fi
    id munge >/dev/null 2>&1 || die "no 'munge' user; is the munge package installed?"
    # munged refuses to run with a key that is missing, not owned by it, or readable by others.
    if [[ ! -s "$MUNGE_KEY" ]]; then
        say "creating munge key $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        elif command -v create-munge-key >/dev/null; then
            create-munge-key -f
        else
            dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_KEY" status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # /run is a tmpfs: its munge dir is gone after a reboot, and without systemd nobody
    # recreates it. The log/state dirs normally come with the package but are checked anyway.
    mkdir -p "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_RUN"
    chmod 0700 /var/lib/munge /var/log/munge
    say "starting munged (as user munge)"
    # --force: start even if a dead munged left its socket behind (the check above showed
    # that no working munged is listening on it).
    runuser -u munge -- munged --force || { show_logs; die "munged failed to start"; }
    wait_for 10 munge_works || { show_logs; die "munged started but 'munge -n | unmunge' still fails"; }
    cat "$MUNGE_RUN/munged.pid" >"$MUNGED_OURS" 2>/dev/null || echo unknown >"$MUNGED_OURS"
}

write_config() {
    local cpus mem_mb
    cpus="$(nproc)"
    # RealMemory a bit below what the kernel reports: a node that claims more memory than
    # slurmd finds would be drained as "Low RealMemory".
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    mem_mb=$((mem_mb * 95 / 100))
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$RUN" "$LOG"
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh on $(date -Is). A one-node test cluster; do not edit,
# the script rewrites it on every fresh start.
ClusterName=resexp-local
# 127.0.0.1 in parentheses: the daemons talk over loopback even where the host name
# resolves to an address that is not reachable (or does not resolve at all).
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CryptoType=crypto/munge
# Root runs both daemons, so jobs may run as any local user.
SlurmUser=root
SlurmdUser=root
# No cgroups: they are often missing or read-only in containers and VMs; track job
# processes through /proc instead and bind no tasks to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No MPI. slurmd/slurmctld still log "can not load PMIx library" errors at start: harmless.
MpiDefault=none
# No accounting database (slurmdbd): sacct is not available on this cluster.
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# No mail program is installed; without this slurmctld logs "Configured MailProg is invalid".
MailProg=/bin/true
SchedulerType=sched/backfill
# Allocate single cores, not whole nodes, so several small jobs share the node. Memory is
# not a consumable resource (CR_Core, not CR_Core_Memory), so jobs that ask for no memory
# (or for more than is free) still start.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that was DOWN (e.g. after a stop/start) comes back by itself when slurmd registers.
ReturnToService=2
# Trust the node line below rather than the detected hardware: each logical CPU counts as a
# core, so with hyperthreads a 1-CPU job still takes 1 CPU, not a whole 2-thread core.
SlurmdParameters=config_overrides
# Short timeouts: this is a test cluster, and stop should not wait long for jobs to die.
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=60
SlurmdTimeout=60
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # SLURM looks for cgroup.conf beside slurm.conf; some versions complain when it is
    # missing even though no cgroup plugin is configured.
    cat >"$DIR/etc/cgroup.conf" <<EOF
# Intentionally minimal: slurm.conf uses no cgroup plugin (see ProctrackType, TaskPlugin).
EOF
    # Let plain `sinfo`/`srun` (and jobs submitted with --export=NONE) find the cluster too,
    # but only where that does not replace somebody's real config.
    if [[ -L "$ETC_CONF" || ! -e "$ETC_CONF" ]]; then
        mkdir -p "$(dirname "$ETC_CONF")"
        ln -sfn "$CONF" "$ETC_CONF"
    fi
    say "wrote $CONF (node $NODE: $cpus CPUs, ${mem_mb} MB; partition $PARTITION)"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# The node is usable: idle, or running jobs (mixed/allocated), not down or drained.
check_node() {
    wait_for 60 node_ready || {
        show_logs
        die "node $NODE is '$(node_state)' in sinfo, not idle, after 60 s (scontrol show node $NODE says why)"
    }
}

# The end-to-end check after a fresh start: a job step really runs on the node.
check_srun() {
    local out
    # --quiet: no "job N queued and waiting for resources" chatter in the captured output.
    out="$(timeout 60 srun --quiet -N1 -n1 -p "$PARTITION" hostname 2>&1)" || {
        show_logs
        die "'srun -N1 hostname' failed: $out"
    }
    say "srun -N1 hostname -> $out"
}

print_export() {
    say "cluster is up. In your shell run:"
    echo "export SLURM_CONF=$CONF"
}

daemons_running() { pid_alive "$RUN/slurmctld.pid" slurmctld && pid_alive "$RUN/slurmd.pid" slurmd; }
any_daemon_running() { pid_alive "$RUN/slurmctld.pid" slurmctld || pid_alive "$RUN/slurmd.pid" slurmd; }

cmd_start() {
    need_root start
    install_packages
    if daemons_running && munge_works; then
        say "already running (slurmctld pid $(cat "$RUN/slurmctld.pid"), slurmd pid $(cat "$RUN/slurmd.pid"))"
        # No srun here: user jobs may hold every CPU, and the check would wait for them.
        check_node
        say "node $NODE is $(node_state)"
        print_export
        return 0
    fi
    if any_daemon_running; then
        # Half up (one daemon died): restart from a clean state rather than patching it.
        say "only part of the cluster is running; restarting it"
        cmd_stop
    fi
    mkdir -p "$RUN" "$LOG"
    start_munge
    write_config
    say "starting slurmctld"
    # slurmctld and slurmd fork into the background themselves; -f because Debian's build
    # would otherwise read /etc/slurm/slurm.conf.
    slurmctld -f "$CONF" || { show_logs; die "slurmctld failed to start"; }
    wait_for 30 ctld_up || { show_logs; die "slurmctld does not answer 'scontrol ping' after 30 s"; }
    say "starting slurmd (node $NODE)"
    slurmd -f "$CONF" -N "$NODE" || { show_logs; die "slurmd failed to start"; }
    check_node
    check_srun
    print_export
}

# Send TERM to the daemon in pid file $1 (command name $2); KILL it if it is still there
# after 15 s.
stop_daemon() {
    local pidfile=$1 name=$2 pid
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(tr -dc '0-9' <"$pidfile")"
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 15 pid_gone "$pid"; then
        say "$name did not exit after 15 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    need_root stop
    # (squeue needs munge: without it, it retries for most of a minute, so skip it then.)
    if pid_alive "$RUN/slurmctld.pid" slurmctld && munge_works; then
        # Cancel the jobs first: slurmd does not kill running jobs when it stops, and
        # leftover job processes would keep running with nobody managing them.
        local jobs
        jobs="$(timeout 20 squeue -h -o %A 2>/dev/null | tr '\n' ' ')" || jobs=""
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086  # one argument per job id
            scancel $jobs 2>/dev/null || true
            wait_for 20 no_active_jobs || say "some jobs are still finishing; stopping anyway"
        fi
    fi
    stop_daemon "$RUN/slurmd.pid" slurmd
    stop_daemon "$RUN/slurmctld.pid" slurmctld
    if [[ -f "$MUNGED_OURS" ]]; then
        local pid
        pid="$(tr -dc '0-9' <"$MUNGED_OURS")"
        if [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == munged ]]; then
            say "stopping munged (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            wait_for 10 pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$MUNGED_OURS"
    fi
    # Drop our /etc symlink so nothing points at a cluster that is not running.
    if [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$CONF" ]]; then
        rm -f "$ETC_CONF"
    fi
    say "stopped (config, state and logs stay in $DIR)"
}

cmd_status() {
    local up=0
    if ! command -v munge >/dev/null || ! command -v slurmctld >/dev/null; then
        say "SLURM/munge not installed ('$0 start' installs them)"
        return 3
    fi
    if munge_works; then say "munged: working"; else say "munged: NOT working"; up=3; fi
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then
        say "slurmctld: running (pid $(cat "$RUN/slurmctld.pid"))"
    else
        say "slurmctld: not running"; up=3
    fi
    if pid_alive "$RUN/slurmd.pid" slurmd; then
        say "slurmd: running (pid $(cat "$RUN/slurmd.pid"))"
    else
        say "slurmd: not running"; up=3
    fi
    if ((up == 0)); then
        sinfo || true
        squeue || true
        echo "export SLURM_CONF=$CONF"
    fi
    return "$up"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
