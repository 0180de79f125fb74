#!/usr/bin/env bash
# Idempotent setup of REAL test infrastructure on Debian 12 (bookworm), no systemd needed:
#   * munged + single-node SLURM 22.05 cluster "pilotci"  (slurmctld :6817, slurmd :6818, node "localhost")
#   * optional 2nd SLURM cluster "pilotci2"               (slurmctld :6827, slurmd :6828, node "c2node")
#   * sshd #1 on 127.0.0.1:$SSH_PORT  -> cluster pilotci
#   * sshd #2 on 127.0.0.2:$SSH_PORT  -> cluster pilotci2 (via sshd_config SetEnv SLURM_CONF=...)
#   * key-only login for non-root user $TEST_USER, paramiko in a venv, end-to-end smoke test.
#   * ACCOUNTING=1: mariadbd (unix socket only) + slurmdbd :6819 so that sacct works for both clusters
#   * sshd #3 on 127.0.0.3:$SSH_PORT  -> emulated PBS Pro  (tests/infra/emulators/pbs on PATH)
#   * sshd #4 on 127.0.0.4:$SSH_PORT  -> emulated LSF      (tests/infra/emulators/lsf on PATH)
#   * /opt/pilot-venv: a venv of Debian's python3 that the test user can read, with this project installed
# Adapted from shared/recipes/slurm-ssh-cluster.sh; this copy is the project's own.
# Usage:  services.sh [up|down|status]     (default: up; "up" restarts everything it owns)
# Env:    BASE=/tmp/pilot-infra TEST_USER=pilot SSH_PORT=2222 SECOND_CLUSTER=1 ACCOUNTING=1
#         FRESH=0 (1 = wipe slurmctld state)  SMOKE=1 (paramiko sbatch/squeue/scancel round trip)
# Daemons are stopped ONLY via the PID files this script writes (PID + /proc/PID/exe checked).
set -euo pipefail

BASE=${BASE:-/tmp/pilot-infra}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${PILOT_CLUSTER_VENV:-/opt/pilot-venv}
EMU=/opt/pilot-emu
ST=$BASE/state
TEST_USER=${TEST_USER:-pilot}
SSH_PORT=${SSH_PORT:-2222}
SECOND_CLUSTER=${SECOND_CLUSTER:-1}
FRESH=${FRESH:-0}          # 1 = wipe slurmctld state (job ids restart at 1)
SMOKE=${SMOKE:-0}
ACCOUNTING=${ACCOUNTING:-1}
PKGS=(munge slurmctld slurmd slurm-client openssh-server python3-venv python3-pip procps iproute2)
((ACCOUNTING)) && PKGS+=(slurmdbd mariadb-server)
C1_CONF=/etc/slurm/slurm.conf
C2_DIR=/etc/slurm-c2
C2_CONF=$C2_DIR/slurm.conf

declare -A T   # timings
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
log() { printf '[setup %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[setup] FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- pid helpers
# stop_pids PIDFILE:EXE ... : SIGTERM every process recorded in a PIDFILE, but only if it
# really runs EXE (guards against PID reuse); wait for all of them together, SIGKILL leftovers.
stop_pids() {
  local spec pf exe pid i left pids=()
  for spec in "$@"; do
    pf=${spec%%:*}; exe=$(readlink -f "${spec#*:}")
    if [[ -s $pf ]]; then
      pid=$(tr -dc 0-9 <"$pf")
      if [[ -n $pid && -d /proc/$pid && $(readlink -f /proc/$pid/exe 2>/dev/null) == "$exe" ]]; then
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && log "SIGTERM $(basename "$exe") pid $pid"
      fi
    fi
    rm -f "$pf"
  done
  for i in $(seq 150); do
    left=(); for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && left+=("$pid"); done
    ((${#left[@]})) || return 0; sleep 0.1
  done
  for pid in "${left[@]}"; do log "SIGKILL pid $pid"; kill -KILL "$pid" 2>/dev/null || true; done
}
alive_pid() { local pf=$1 pid; [[ -s $pf ]] && pid=$(tr -dc 0-9 <"$pf") && [[ -d /proc/$pid ]]; }
wait_port() { # host port timeout_s
  local i; for i in $(seq $(( $3 * 20 ))); do
    (exec 3<>/dev/tcp/"$1"/"$2") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

down() {
  # wave 1: clients of munge/slurmdbd; wave 2: the services they talk to
  stop_pids "$ST/sshd4.pid:/usr/sbin/sshd" "$ST/sshd3.pid:/usr/sbin/sshd" \
    "$ST/sshd2.pid:/usr/sbin/sshd" "$ST/sshd1.pid:/usr/sbin/sshd" \
    /run/slurmd-c2.pid:/usr/sbin/slurmd /run/slurmd.pid:/usr/sbin/slurmd \
    /run/slurmctld-c2.pid:/usr/sbin/slurmctld /run/slurmctld.pid:/usr/sbin/slurmctld
  stop_pids /run/slurmdbd.pid:/usr/sbin/slurmdbd /run/mysqld/mysqld.pid:/usr/sbin/mariadbd \
    /run/munge/munged.pid:/usr/sbin/munged
}

status() {
  local f
  for f in /run/munge/munged.pid /run/mysqld/mysqld.pid /run/slurmdbd.pid /run/slurmctld.pid /run/slurmd.pid /run/slurmctld-c2.pid \
           /run/slurmd-c2.pid "$ST/sshd1.pid" "$ST/sshd2.pid" "$ST/sshd3.pid" "$ST/sshd4.pid"; do
    if alive_pid "$f"; then echo "UP   $f pid $(cat "$f")"; else echo "DOWN $f"; fi
  done
}

install_emulators() { # copy tests/infra/emulators/{pbs,lsf} to $EMU (the PATH of sshd #3 and #4)
  local kind
  for kind in pbs lsf; do
    if [[ -d $REPO/tests/infra/emulators/$kind ]]; then
      rm -rf "${EMU:?}/$kind"; install -d -m 755 "$EMU/$kind"
      cp -r "$REPO/tests/infra/emulators/$kind/." "$EMU/$kind/"
      cp "$REPO/tests/infra/emulators/common/"*.py "$EMU/$kind/lib/"
      chmod -R a+rX "$EMU/$kind"; chmod a+rx "$EMU/$kind"/bin/* 2>/dev/null || true
    fi
    install -d -o "$TEST_USER" -g "$TEST_USER" -m 755 "/var/tmp/pilot-emu-$kind"
  done
}

case "${1:-up}" in
  down) down; exit 0 ;;
  emulators) install_emulators; exit 0 ;;
  status) status; exit 0 ;;
  up) ;;
  *) die "usage: $0 [up|down|status|emulators]" ;;
esac
[[ $(id -u) == 0 ]] || die "must run as root"
T0=$(now)

# ---------------------------------------------------------------- 1. packages
t=$(now)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep maintainer scripts from trying to start services (no systemd / init here)
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$BASE/apt-install.log" 2>&1 \
    || { tail -30 "$BASE/apt-install.log"; die "apt-get install failed"; }
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
fi
T[apt_install]=$(since "$t")

mkdir -p "$ST" "$ST/ssh"

# ---------------------------------------------------------------- 2. stop what we own
t=$(now)
down
T[stop_previous]=$(since "$t")

# ---------------------------------------------------------------- 3. munge
t=$(now)
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || die "munge round trip failed"
T[munge_start]=$(since "$t")

# ---------------------------------------------------------------- 4. slurm config
write_slurm_conf() { # file cluster ctldport dport node nodeaddr statedir spooldir logdir pidsuffix
  cat >"$1" <<EOF
# generated by $0
ClusterName=$2
SlurmctldHost=localhost
SlurmctldPort=$3
SlurmdPort=$4
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$7
SlurmdSpoolDir=$8
SlurmctldPidFile=/run/slurmctld${10}.pid
SlurmdPidFile=/run/slurmd${10}.pid
SlurmctldLogFile=$9/slurmctld.log
SlurmdLogFile=$9/slurmd.log
# no cgroups: works in containers / VMs without a delegated cgroup tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# sacct needs slurmdbd (22.05 ships only accounting_storage/{none,slurmdbd});
# jobcomp/filetxt additionally gives one persistent text line per finished job
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$9/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# advertise more CPUs than the box has so tests can run many pilots at once
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=2
InactiveLimit=0
MpiDefault=none
NodeName=$5 NodeAddr=$6 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$5 Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$5 MaxTime=00:05:00 State=UP
EOF
}
if ((ACCOUNTING)); then
  ACCT_LINES=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819\nJobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=30'
else
  ACCT_LINES=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
fi
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
write_slurm_conf "$C1_CONF" pilotci 6817 6818 localhost 127.0.0.1 \
  /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm ""
if ((SECOND_CLUSTER)); then
  install -d "$C2_DIR"; cp /etc/slurm/plugstack.conf "$C2_DIR/" 2>/dev/null || true
  install -d -o slurm -g slurm /var/lib/slurm-c2/slurmctld /var/lib/slurm-c2/slurmd /var/log/slurm-c2
  write_slurm_conf "$C2_CONF" pilotci2 6827 6828 c2node 127.0.0.2 \
    /var/lib/slurm-c2/slurmctld /var/lib/slurm-c2/slurmd /var/log/slurm-c2 "-c2"
fi

# ---------------------------------------------------------------- 5a. accounting: mariadb + slurmdbd
if ((ACCOUNTING)); then
  t=$(now)
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid --log-error="$ST/mariadb.err" </dev/null >/dev/null 2>&1
  for i in $(seq 300); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || die "mariadb not up"
  T[mariadb_start]=$(since "$t"); t=$(now)
  printf '%s\n' AuthType=auth/munge DbdHost=localhost DbdPort=6819 SlurmUser=slurm \
    PidFile=/run/slurmdbd.pid LogFile=/var/log/slurm/slurmdbd.log \
    StorageType=accounting_storage/mysql StorageHost=localhost StorageUser=slurm \
    StoragePass=slurmpw StorageLoc=slurm_acct_db >/etc/slurm/slurmdbd.conf
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  /usr/sbin/slurmdbd
  for i in $(seq 300); do sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1 && break; sleep 0.1; done
  have=$(sacctmgr -n -P list cluster format=cluster) || die "slurmdbd not answering"
  for c in pilotci $( ((SECOND_CLUSTER)) && echo pilotci2); do
    grep -qx "$c" <<<"$have" || sacctmgr -i add cluster "$c" >/dev/null
  done
  T[slurmdbd_start]=$(since "$t")
fi

# ---------------------------------------------------------------- 5. slurm daemons
start_cluster() { # conf nodename ctldport label
  local conf=$1 node=$2 port=$3 label=$4 t i st clear=()
  ((FRESH)) && clear=(-c)
  t=$(now)
  /usr/sbin/slurmctld -f "$conf" "${clear[@]}"
  for i in $(seq 200); do SLURM_CONF=$conf scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  SLURM_CONF=$conf scontrol ping | grep -q UP || die "slurmctld ($label) not answering; see its log"
  T[${label}_slurmctld_listen]=$(since "$t")
  /usr/sbin/slurmd -f "$conf" -N "$node"
  for i in $(seq 300); do
    st=$(SLURM_CONF=$conf sinfo -h -n "$node" -o %T 2>/dev/null | head -1 || true)
    [[ $st == idle || $st == mixed || $st == allocated ]] && break; sleep 0.1
  done
  [[ $st == idle || $st == mixed || $st == allocated ]] || {
    SLURM_CONF=$conf scontrol show node "$node" | grep -E 'State|Reason'; die "node $node not up ($st)"; }
  T[${label}_ctld_to_node_idle]=$(since "$t")
}
start_cluster "$C1_CONF" localhost 6817 c1
((SECOND_CLUSTER)) && start_cluster "$C2_CONF" c2node 6827 c2

# ---------------------------------------------------------------- 6. sshd(s) + user
t=$(now)
id -u "$TEST_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TEST_USER"
usermod -p '*' "$TEST_USER"   # '!' (useradd default) = locked -> sshd refuses even pubkey when UsePAM=no
H=$(getent passwd "$TEST_USER" | cut -d: -f6)
[[ -s $ST/ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C "pilot-ci" -f "$ST/ssh/id_ed25519"
[[ -s $ST/ssh/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$ST/ssh/ssh_host_ed25519_key"
install -d -o "$TEST_USER" -g "$TEST_USER" -m 700 "$H/.ssh"
install -o "$TEST_USER" -g "$TEST_USER" -m 600 "$ST/ssh/id_ed25519.pub" "$H/.ssh/authorized_keys"
chmod 755 "$BASE" "$ST"; chmod 700 "$ST/ssh"
install -d -m 0755 /run/sshd           # privilege-separation dir, normally made by systemd
write_sshd_conf() { # file addr pidfile extra...
  local f=$1 addr=$2 pf=$3; shift 3
  cat >"$f" <<EOF
ListenAddress $addr:$SSH_PORT
HostKey $ST/ssh/ssh_host_ed25519_key
PidFile $pf
AllowUsers $TEST_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes yes
MaxStartups 100:30:200
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  local l; for l in "$@"; do echo "$l" >>"$f"; done
}
write_sshd_conf "$ST/sshd1_config" 127.0.0.1 "$ST/sshd1.pid"
/usr/sbin/sshd -t -f "$ST/sshd1_config"
/usr/sbin/sshd -f "$ST/sshd1_config" -E "$ST/sshd1.log"
wait_port 127.0.0.1 "$SSH_PORT" 10 || die "sshd1 not listening"
hk=$(cut -d' ' -f1,2 "$ST/ssh/ssh_host_ed25519_key.pub")
echo "[127.0.0.1]:$SSH_PORT $hk" >"$ST/ssh/known_hosts"
if ((SECOND_CLUSTER)); then
  write_sshd_conf "$ST/sshd2_config" 127.0.0.2 "$ST/sshd2.pid" "SetEnv SLURM_CONF=$C2_CONF"
  /usr/sbin/sshd -t -f "$ST/sshd2_config"
  /usr/sbin/sshd -f "$ST/sshd2_config" -E "$ST/sshd2.log"
  wait_port 127.0.0.2 "$SSH_PORT" 10 || die "sshd2 not listening"
  echo "[127.0.0.2]:$SSH_PORT $hk" >>"$ST/ssh/known_hosts"
fi
# emulated PBS (127.0.0.3) and LSF (127.0.0.4): the emulators come first on PATH
install_emulators
EPATH=/usr/local/bin:/usr/bin:/bin
write_sshd_conf "$ST/sshd3_config" 127.0.0.3 "$ST/sshd3.pid" \
  "SetEnv PATH=$EMU/pbs/bin:$EPATH PILOT_EMU_STATE=/var/tmp/pilot-emu-pbs"
/usr/sbin/sshd -t -f "$ST/sshd3_config"
/usr/sbin/sshd -f "$ST/sshd3_config" -E "$ST/sshd3.log"
wait_port 127.0.0.3 "$SSH_PORT" 10 || die "sshd3 not listening"
echo "[127.0.0.3]:$SSH_PORT $hk" >>"$ST/ssh/known_hosts"
write_sshd_conf "$ST/sshd4_config" 127.0.0.4 "$ST/sshd4.pid" \
  "SetEnv PATH=$EMU/lsf/bin:$EPATH PILOT_EMU_STATE=/var/tmp/pilot-emu-lsf"
/usr/sbin/sshd -t -f "$ST/sshd4_config"
/usr/sbin/sshd -f "$ST/sshd4_config" -E "$ST/sshd4.log"
wait_port 127.0.0.4 "$SSH_PORT" 10 || die "sshd4 not listening"
echo "[127.0.0.4]:$SSH_PORT $hk" >>"$ST/ssh/known_hosts"
chmod 644 "$ST/ssh/known_hosts"
T[sshd_user_keys]=$(since "$t")

# ---------------------------------------------------------------- 7. cluster-side venv
# The pilot worker runs inside batch jobs as $TEST_USER with Debian's python3: give it a venv it can
# read, with this project and its dependencies (tests/conftest.py refreshes the project with --no-deps).
t=$(now)
PY=$VENV/bin/python
if ! "$PY" -c 'import fireworks, paramiko, pymongo, pydantic, jinja2, click, psutil' 2>/dev/null; then
  rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >"$BASE/pip.log" 2>&1
  "$VENV/bin/pip" install -q "$REPO" >>"$BASE/pip.log" 2>&1 || { cat "$BASE/pip.log"; die "pip install into $VENV failed"; }
else
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO" >"$BASE/pip.log" 2>&1 \
    || { cat "$BASE/pip.log"; die "pip install into $VENV failed"; }
fi
chmod -R a+rX "$VENV"
T[cluster_venv]=$(since "$t")

cat >"$ST/env.sh" <<EOF
export PILOT_SSH_USER=$TEST_USER
export PILOT_SSH_KEY=$ST/ssh/id_ed25519
export PILOT_SSH_KNOWN_HOSTS=$ST/ssh/known_hosts
export PILOT_SSH_PORT=$SSH_PORT
export PILOT_CLUSTER1=127.0.0.1   # slurm cluster pilotci
export PILOT_CLUSTER2=127.0.0.2   # slurm cluster pilotci2 (if SECOND_CLUSTER=1)
export PILOT_PYTHON=$PY
export PILOT_CLUSTER_VENV=$VENV
export PILOT_ACCOUNTING=$ACCOUNTING
export PILOT_CLUSTER3=127.0.0.3   # emulated PBS Pro
export PILOT_CLUSTER4=127.0.0.4   # emulated LSF
EOF
cat >"$ST/clusters.json" <<EOF
{"user": "$TEST_USER", "port": $SSH_PORT, "key": "$ST/ssh/id_ed25519", "known_hosts": "$ST/ssh/known_hosts",
 "venv": "$VENV", "accounting": $ACCOUNTING,
 "clusters": [
  {"name": "pilotci",  "host": "127.0.0.1", "scheduler": "slurm", "slurm_conf": "$C1_CONF"},
  {"name": "pilotci2", "host": "127.0.0.2", "scheduler": "slurm", "slurm_conf": "$C2_CONF"},
  {"name": "emupbs",   "host": "127.0.0.3", "scheduler": "pbs"},
  {"name": "emulsf",   "host": "127.0.0.4", "scheduler": "lsf"}]}
EOF
chmod 644 "$ST/clusters.json"

# ---------------------------------------------------------------- 8. smoke test via paramiko
if ((SMOKE)); then
  t=$(now)
  hosts=127.0.0.1; ((SECOND_CLUSTER)) && hosts="127.0.0.1 127.0.0.2"
  python3 - "$ST" "$TEST_USER" "$SSH_PORT" "$ACCOUNTING" $hosts <<'PYEOF'
import sys, time, paramiko
st, user, port, acct, hosts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5:]
def run(c, cmd):
    _, o, e = c.exec_command(cmd, timeout=30)
    rc = o.channel.recv_exit_status()
    return rc, o.read().decode().strip(), e.read().decode().strip()
for h in hosts:
    t0 = time.time()
    c = paramiko.SSHClient()
    c.load_host_keys(f"{st}/ssh/known_hosts")
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(h, port=port, username=user, key_filename=f"{st}/ssh/id_ed25519",
              allow_agent=False, look_for_keys=False, timeout=10)
    t_conn = time.time() - t0
    rc, cl, _ = run(c, "scontrol show config | awk '/^ClusterName/{print $3}'")
    t1 = time.time()
    rc, jid, err = run(c, "sbatch --parsable -J smoke -o /dev/null --wrap 'sleep 30'")
    assert rc == 0 and jid.isdigit(), (rc, jid, err)
    t_sub = time.time() - t1
    while True:
        rc, s, _ = run(c, f"squeue -h -j {jid} -o %T")
        if s == "RUNNING": break
        assert time.time() - t1 < 30, s
        time.sleep(0.1)
    t_run = time.time() - t1
    run(c, f"scancel {jid}")
    while True:
        rc, s, _ = run(c, f"squeue -h -t all -j {jid} -o %T")
        if s == "CANCELLED": break
        assert time.time() - t1 < 30, s
        time.sleep(0.1)
    t_can = time.time() - t1
    sacct = "n/a"
    while acct:
        rc, s, _ = run(c, f"sacct -n -X -P -j {jid} -o State")
        if s.startswith("CANCELLED"): sacct = f"{s!r} after {time.time() - t1:.2f}s"; break
        assert time.time() - t1 < 30, s
        time.sleep(0.2)
    c.close()
    print(f"  ssh {user}@{h}:{port} cluster={cl} job={jid}: connect {t_conn:.2f}s, "
          f"sbatch {t_sub:.2f}s, sbatch->RUNNING {t_run:.2f}s, ->CANCELLED {t_can:.2f}s, sacct {sacct}")
PYEOF
  T[paramiko_smoke]=$(since "$t")
fi


T[total]=$(since "$T0")
echo "=================== timings (s) ==================="
for k in apt_install stop_previous munge_start mariadb_start slurmdbd_start c1_slurmctld_listen c1_ctld_to_node_idle \
         c2_slurmctld_listen c2_ctld_to_node_idle sshd_user_keys cluster_venv paramiko_smoke total; do
  [[ -n ${T[$k]:-} ]] && printf '  %-24s %s\n' "$k" "${T[$k]}"
done
status
echo "env for tests: source $ST/env.sh ; stop with: $0 down"
