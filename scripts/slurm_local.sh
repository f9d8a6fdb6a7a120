#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the tests in tests/slurm/ and for trying
# `medlm-train -m hydra/launcher=slurm ...` without a cluster. Debian's packages, run as root
# without systemd: munged (as the munge user), a private MariaDB, slurmdbd (so that `sacct`,
# which submitit polls for job states, answers), slurmctld and slurmd.
#
#   scripts/slurm_local.sh install   # apt-get the packages (root; what CI runs)
#   scripts/slurm_local.sh up        # start everything; does nothing if it is already up
#   scripts/slurm_local.sh status    # each daemon and the node's state; exit 1 unless all are up
#   scripts/slurm_local.sh env       # the line that points SLURM's commands at this cluster
#   scripts/slurm_local.sh down      # stop everything (state and logs stay in the directory)
#
# Everything (config, state, logs, sockets, the database) lives in $MEDLM_SLURM_DIR
# (default /tmp/medlm-slurm). The cluster is one node with this machine's real CPU count and
# memory (from `slurmd -C`), one partition `debug`, requeue on, and `cred_expire=10` so that a
# requeued job may start again after about 10 s instead of SLURM's default 120 s.
# SLURM's commands find the config through SLURM_CONF; `up` also links /etc/slurm/slurm.conf to
# it when that file does not exist, so that plain `sbatch`/`sinfo` work in any shell.
set -euo pipefail

DIR="${MEDLM_SLURM_DIR:-/tmp/medlm-slurm}"
CLUSTER=medlm
PARTITION=debug
CTLD_PORT="${MEDLM_SLURM_PORT:-6817}"  # slurmctld; slurmd and slurmdbd use the next two ports
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

CONF="$DIR/etc/slurm.conf"
DBD_CONF="$DIR/etc/slurmdbd.conf"
# SLURM's clients reach munged only through its default socket (sacctmgr ignores AuthInfo's
# socket=), so munged listens there; an munged already serving it (the system's) is used as is.
export MUNGE_SOCKET=/run/munge/munge.socket.2
DB_SOCKET="$DIR/mysql/mysqld.sock"
export SLURM_CONF="$CONF"
export MYSQL_UNIX_PORT="$DB_SOCKET"  # slurmdbd reaches MariaDB through this socket, no TCP

die() { echo "slurm_local: $*" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (daemons run as root without systemd)"
}

# The pid in FILE is a live process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Poll COMMAND (a string; 5 s at most a try) until it succeeds, for up to SECONDS; fail with WHAT
# and the LOG's tail.
wait_for() {
  local what=$1 seconds=$2 log=$3 command=$4 deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if timeout 5 bash -c "$command" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  [ -f "$log" ] && tail -n 20 "$log" >&2
  die "$what did not come up within ${seconds}s (log: $log)"
}

cmd_install() {
  need_root install
  command -v apt-get >/dev/null || die "install: apt-get not found (Debian/Ubuntu only)"
  # Without systemd, the packages' postinst would try to start the system's own daemons: deny it
  # for the install (the container convention) unless a policy already exists.
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
  fi
  local rc=0
  if ! apt-cache show "${PACKAGES[0]}" >/dev/null 2>&1; then
    apt-get update -q || rc=$?
  fi
  [ $rc = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${PACKAGES[@]}" || rc=$?; }
  [ $added = 1 ] && rm -f "$policy"
  [ $rc = 0 ] || die "install: apt-get failed (exit $rc)"
  say "installed ${PACKAGES[*]}"
}

installed() {
  local b
  for b in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$b" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null || return 1
  done
}

write_configs() {
  local node host
  host=$(hostname -s)
  # the node line with the real CPU count and memory; drop the UpTime line slurmd -C adds
  node=$(slurmd -C | head -n 1)
  [[ "$node" == NodeName=* ]] || die "slurmd -C printed no node line: $node"
  mkdir -p "$DIR/etc"
  cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh: a single-node cluster for tests
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again once its credential expired: 10 s instead of 120 s
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups without systemd: processes are tracked through /proc; each task is bound to its CPUs
# (sched_setaffinity), so that torch starts one thread per allotted CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
# job states for sacct (submitit polls it) through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((CTLD_PORT + 2))
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# requeue: jobs may be requeued (scontrol requeue, preemption); a killed job's processes get
# SIGTERM and KillWait seconds to save a checkpoint before SIGKILL
JobRequeue=1
KillWait=30
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DBD_CONF" <<EOF
# written by scripts/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((CTLD_PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
# MariaDB through its socket (MYSQL_UNIX_PORT) as root, authenticated by the socket's peer uid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
}

munge_ok() { munge -n -S "$MUNGE_SOCKET" </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
export -f munge_ok

start_munge() {
  alive "$DIR/munge/munged.pid" && return 0
  munge_ok && return 0  # the system's munged
  mkdir -p "$DIR/munge" /run/munge
  chown munge:munge "$DIR/munge" /run/munge && chmod 700 "$DIR/munge" && chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for munged 10 "$DIR/munge/munged.log" munge_ok
}

start_mariadb() {
  alive "$DIR/mysql/mysqld.pid" && return 0
  mkdir -p "$DIR/mysql"
  chown mysql:mysql "$DIR/mysql"
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DIR/mysql/data" --skip-test-db \
      >"$DIR/log/mariadb-install.log" 2>&1 || { cat "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  # no TCP at all: slurmdbd connects through the socket
  setsid mariadbd --user=mysql --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" \
    --skip-networking --pid-file="$DIR/mysql/mysqld.pid" --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  wait_for mariadb 30 "$DIR/log/mariadb.log" "[ -S '$DB_SOCKET' ] && mariadb -S '$DB_SOCKET' -e 'select 1'"
}

start_slurmdbd() {
  alive "$DIR/run/slurmdbd.pid" && return 0
  slurmdbd
  wait_for slurmdbd 30 "$DIR/log/slurmdbd.log" "sacctmgr -n -P show cluster"
  if [ -z "$(sacctmgr -n -P show cluster format=cluster where cluster=$CLUSTER)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurm() {
  if ! alive "$DIR/run/slurmctld.pid"; then
    slurmctld
    wait_for slurmctld 30 "$DIR/log/slurmctld.log" "scontrol ping | grep -q UP"
  fi
  if ! alive "$DIR/run/slurmd.pid"; then
    slurmd
  fi
  # the node has registered and takes jobs
  wait_for "the node" 30 "$DIR/log/slurmd.log" \
    "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
}

link_etc_conf() {
  local etc=/etc/slurm/slurm.conf
  if [ -L "$etc" ] || [ ! -e "$etc" ]; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" "$etc"
  else
    say "$etc is another cluster's config: run 'export SLURM_CONF=$CONF' in your shell"
  fi
}

all_up() {
  munge_ok && alive "$DIR/mysql/mysqld.pid" && alive "$DIR/run/slurmdbd.pid" \
    && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid"
}

cmd_up() {
  need_root up
  installed || die "SLURM packages are not installed: run 'scripts/slurm_local.sh install' as root"
  if all_up; then
    say "already up ($DIR)"
    return 0
  fi
  local start=$SECONDS
  mkdir -p "$DIR"/{etc,log,run,spool/ctld,spool/d}
  # a daemon that is already running keeps the config it was started with
  alive "$DIR/run/slurmctld.pid" || write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  link_etc_conf
  say "up in $((SECONDS - start))s: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %T' | head -n 1) ($DIR)"
}

# Stop the daemon whose pid is in FILE: SIGTERM, then SIGKILL after 15 s.
stop_pid() {
  local file=$1 pid i
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$file"
}

cmd_down() {
  need_root down
  # slurmd leaves running job steps alive when it stops: cancel every job first (pending ones too,
  # or they would start again at the next `up`) and give them KillWait to save and exit
  local jobs i
  if alive "$DIR/run/slurmctld.pid"; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 35 * 5; i++)); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  stop_pid "$DIR/run/slurmd.pid"
  stop_pid "$DIR/run/slurmctld.pid"
  stop_pid "$DIR/run/slurmdbd.pid"
  stop_pid "$DIR/mysql/mysqld.pid"
  stop_pid "$DIR/munge/munged.pid"
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  say "down"
}

cmd_status() {
  local name file rc=0
  if alive "$DIR/munge/munged.pid"; then
    echo "munged: running (pid $(cat "$DIR/munge/munged.pid"))"
  elif munge_ok; then
    echo "munged: running (the system's, on $MUNGE_SOCKET)"
  else
    echo "munged: stopped"
    rc=1
  fi
  for name in mariadb:mysql/mysqld.pid slurmdbd:run/slurmdbd.pid \
    slurmctld:run/slurmctld.pid slurmd:run/slurmd.pid; do
    file="$DIR/${name#*:}"
    if alive "$file"; then
      echo "${name%%:*}: running (pid $(cat "$file"))"
    else
      echo "${name%%:*}: stopped"
      rc=1
    fi
  done
  if [ $rc = 0 ]; then
    sinfo -N -o '%N %P %c %m %T' || rc=1
  fi
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac
