#!/usr/bin/env bash
# The real test services, each test cluster a separate host (Debian 12, root, no systemd, no containers).
#
#   fileserver      the root network namespace: the test process, the manager, the embedded LaunchPad
#                   (on $FS_IP, an address of its own), munged, MariaDB + slurmdbd (SLURM accounting)
#   CLUSTER-login   a network namespace per cluster: sshd :22 (and slurmctld, the scheduler commands)
#   CLUSTER-node    a network namespace per cluster: slurmd, or the emulated PBS/LSF execution daemon
#
#   cluster    scheduler  fileserver side     login node (up / in)            compute node     route to the fileserver
#   pilotci    slurm      198.51.100.17/28    198.51.100.18 / 203.0.113.129   203.0.113.130    yes (through the login node)
#   pilotci2   slurm      198.51.100.33/28    198.51.100.34 / 203.0.113.145   203.0.113.146    yes
#   pilotci3   slurm      198.51.100.49/28    198.51.100.50 / 203.0.113.161   203.0.113.162    NO (as on many real clusters;
#                                                                                                   its node also runs an sshd)
#   emupbs     PBS (emu)  198.51.100.65/28    198.51.100.66 / 203.0.113.177   203.0.113.178    yes
#   emulsf     LSF (emu)  198.51.100.81/28    198.51.100.82 / 203.0.113.193   203.0.113.194    yes
#   emusge     SGE (emu)  198.51.100.97/28    198.51.100.98 / 203.0.113.209   203.0.113.210    yes
#   emutorque  Torque     198.51.100.113/28   198.51.100.114 / 203.0.113.225  203.0.113.226    yes
#              (the PBS emulator with PILOT_EMU_FLAVOR=torque)
#
# pilotci2's login node has a second sshd on :2222 that asks for a one-time password after the key, as national
# centres do (AuthenticationMethods publickey,keyboard-interactive; PAM's pam_oath checks a TOTP code; issue 21).
# Its PAM service is its own (/etc/pam.d/pilot-sshd-otp): sshd names it after the program, started as a link.
#
# The lower half of 203.0.113.0/24 is left alone: this workplace's package registries answer there. `up` checks
# that no address this machine uses (its routes, its resolver's answers for the registries) falls in our ranges.
#
# Only RFC 5737 documentation addresses; namespaces route nothing but these ranges (no default routes), and
# the root namespace does not forward. munged stays in the root namespace: its socket is a file, which every
# namespace shares. Namespaces are entered with `nsenter --net=` (not `ip netns exec`, which remounts /sys and
# hides the cgroup mounts slurmd needs).
#
# Usage:  services.sh up|down|status|purge|emulators|host NAME
#   up        (re)start everything; idempotent: stops what it owns first
#   host NAME (re)start one cluster host (its namespaces, link, scheduler, sshd, emulator copy, its entry in
#             clusters.json and known_hosts) and touch nothing else; the other services must be up. For a
#             host added to CLUSTERS while the services run (`up` starts it like every other).
#   down      stop every daemon by its PID file, delete every namespace, veth and the fileserver address
#   status    each host with its address and each daemon with its PID
#   purge     down, then remove everything the suite ever created (state dirs, users, keys, venvs, emulator
#             dirs, old layouts), so that the next `up` runs as on a new machine. PURGE_PACKAGES=1 also
#             removes the Debian packages it installed.
#   emulators copy tests/infra/emulators into $EMU (the login nodes' PATH); the Torque cluster gets its own
#             copy of the PBS emulator ($EMU/torque), so reinstalling one never swaps files under the other
# Env:    BASE=/tmp/pilot-infra TEST_USER=pilot ACCOUNTING=1
set -euo pipefail

BASE=${BASE:-/tmp/pilot-infra}
PKG_RECORD=/var/lib/pilot-test-packages.list   # Debian packages the suite installed (tests/run.sh adds its own)
KEYS=/etc/pilot-test-ssh   # root-owned: sshd's StrictModes refuses key files below /tmp
ST=$BASE/state
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${PILOT_CLUSTER_VENV:-/opt/pilot-venv}
EMU=/opt/pilot-emu
TEST_USER=${TEST_USER:-pilot}
ACCOUNTING=${ACCOUNTING:-1}
FS_IP=198.51.100.1
FS_DEV=lo   # the fileserver's address sits on its loopback device (no dummy interfaces in every kernel)
DBD_PORT=6819
PKGS=(munge slurmctld slurmd slurm-client openssh-server openssh-client openssl python3-venv python3-pip procps iproute2 util-linux
      libpam-oath)
OTP_CLUSTER=pilotci2 OTP_PORT=2222 OTP_PAM=pilot-sshd-otp   # the TOTP-protected sshd (see above)
if [[ $ACCOUNTING == 1 ]]; then PKGS+=(slurmdbd mariadb-server); fi
#          name     idx scheduler routed
TEST_NETS=(198.51.100.0/24 203.0.113.128/25)   # the ranges the clusters' addresses come from
CLUSTERS=("pilotci 1 slurm 1" "pilotci2 2 slurm 1" "pilotci3 3 slurm 0" "emupbs 4 pbs 1" "emulsf 5 lsf 1"
          "emusge 6 sge 1" "emutorque 7 torque 1")
EMU_KINDS=(pbs lsf sge torque)   # emulated schedulers; torque is the PBS emulator's source (emu_src)
emu_src() { [[ $1 == torque ]] && echo pbs || echo "$1"; }   # tests/infra/emulators/<dir> of a kind

declare -A T   # timings
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
log() { printf '[services %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[services] FATAL: %s\n' "$*" >&2; exit 1; }
[[ $ACCOUNTING == 0 || $ACCOUNTING == 1 ]] || die "ACCOUNTING must be 0 or 1"

# ---------------------------------------------------------------- addresses
# cluster IDX: fileserver side 198.51.100.(16*IDX+1), login up .2; inside 203.0.113.(112+16*IDX+1), node .2
fs_side() { echo "198.51.100.$((16 * $1 + 1))"; }
login_up() { echo "198.51.100.$((16 * $1 + 2))"; }
login_in() { echo "203.0.113.$((112 + 16 * $1 + 1))"; }
node_ip() { echo "203.0.113.$((112 + 16 * $1 + 2))"; }
inner_net() { echo "203.0.113.$((112 + 16 * $1))/28"; }
outer_net() { echo "198.51.100.$((16 * $1))/28"; }

check_addresses() { # refuse to shadow an address this machine already uses (a route, a registry's address)
  local nets=("$FS_IP/32" "${TEST_NETS[@]}") c name idx sched routed
  for c in "${CLUSTERS[@]}"; do read -r name idx sched routed <<<"$c"; nets+=("$(outer_net "$idx")" "$(inner_net "$idx")"); done
  python3 - "${nets[@]}" <<'PY' || die "address clash: see above; change the ranges at the top of tests/infra/services.sh"
import ipaddress, socket, subprocess, sys
ours = [ipaddress.ip_network(n) for n in sys.argv[1:]]
used = {}
for host in ("pypi.org", "files.pythonhosted.org", "deb.debian.org", "registry.npmjs.org"):
    try:
        for info in socket.getaddrinfo(host, 443, socket.AF_INET):
            used[info[4][0]] = f"{host} resolves to it"
    except OSError:
        pass
for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if f[1] != "lo":
        used[f[3].split("/")[0]] = f"address of {f[1]}"
for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if "via" in f:
        used[f[f.index("via") + 1]] = f"gateway in route '{line}'"
bad = [(a, why, n) for a, why in used.items() for n in ours if ipaddress.ip_address(a) in n]
for a, why, n in bad:
    print(f"[services] {a} ({why}) lies in the test range {n}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
in_login() { local n=$1; shift; nsenter --net="/run/netns/$n-login" "$@"; }
in_node() { local n=$1; shift; nsenter --net="/run/netns/$n-node" "$@"; }

# ---------------------------------------------------------------- pid helpers
# stop_pids PIDFILE:EXE ... : SIGTERM every process recorded in a PIDFILE, but only if it really runs EXE
# (guards against PID reuse); wait for all of them together, SIGKILL leftovers.
stop_pids() {
  local spec pf exe pid left pids=()
  for spec in "$@"; do
    pf=${spec%%:*}; exe=${spec#*:}
    if [[ -s $pf ]]; then
      pid=$(tr -dc 0-9 <"$pf")
      if [[ -n $pid && -d /proc/$pid ]] && exe_matches "$pid" "$exe"; then
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && log "SIGTERM $(basename "$exe") pid $pid ($(basename "$pf"))"
      fi
    fi
    rm -f "$pf"
  done
  for _ in $(seq 150); do
    left=(); for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && left+=("$pid"); done
    ((${#left[@]})) || return 0; sleep 0.1
  done
  for pid in "${left[@]}"; do log "SIGKILL pid $pid"; kill -KILL "$pid" 2>/dev/null || true; done
}
exe_matches() { # pid exe: the process runs exe (or is a python running exe as its script)
  local real; real=$(readlink -f "/proc/$1/exe" 2>/dev/null) || return 1
  [[ $real == "$(readlink -f "$2")" ]] && return 0
  [[ $2 == *.py ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$2"
}
alive_pid() { local pf=$1 pid; [[ -s $pf ]] && pid=$(tr -dc 0-9 <"$pf") && [[ -d /proc/$pid ]]; }
wait_tcp() { # netns-or-"" host port seconds
  local ns=$1 host=$2 port=$3 i pre=()
  [[ -n $ns ]] && pre=(nsenter --net="/run/netns/$ns")
  for i in $(seq $(($4 * 20))); do
    "${pre[@]}" bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0; sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- down / status
cluster_pidfiles() { # name scheduler -> PIDFILE:EXE specs
  local d=$ST/$1
  echo "$d/sshd-node.pid:/usr/sbin/sshd" "$d/sshd.pid:/usr/sbin/sshd" "$d/sshd-otp.pid:/usr/sbin/sshd"
  case $2 in
    slurm) echo "$d/slurmd.pid:/usr/sbin/slurmd" "$d/slurmctld.pid:/usr/sbin/slurmctld" ;;
    pbs|lsf|sge|torque) echo "$d/mom.pid:$EMU/$2/lib/$(emu_src "$2")emu.py" ;;
  esac
}

kill_in_netns() { # every process still in network namespace $1 (batch jobs, ssh sessions), by PID
  local pids
  [[ -e /run/netns/$1 ]] || return 0
  pids=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
  [[ -n ${pids// } ]] || return 0
  log "SIGKILL what was left in $1: $pids"
  kill -KILL $pids 2>/dev/null || true
  sleep 0.2
}

down() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  local c name idx sched routed specs=()
  for c in "${CLUSTERS[@]}"; do read -r name idx sched routed <<<"$c"; specs+=($(cluster_pidfiles "$name" "$sched")); done
  stop_pids "${specs[@]}"   # wave 1: clients of munge and slurmdbd; wave 2: the services they talk to
  stop_pids "$ST/acct/slurmdbd.pid:/usr/sbin/slurmdbd" "$ST/acct/mariadb.pid:/usr/sbin/mariadbd" \
    "$ST/munged.pid:/usr/sbin/munged"
  rm -f "$ST/clusters.json"   # the fixtures read it as "the services are up"
  for c in "${CLUSTERS[@]}"; do
    read -r name idx sched routed <<<"$c"
    kill_in_netns "$name-node"; kill_in_netns "$name-login"   # jobs, sessions: nothing may pin a namespace
    ip link del "pfs-$name" 2>/dev/null || true
    ip route del "$(inner_net "$idx")" 2>/dev/null || true
    ip netns del "$name-node" 2>/dev/null || true
    ip netns del "$name-login" 2>/dev/null || true
  done
  ip addr del "$FS_IP/32" dev "$FS_DEV" 2>/dev/null || true
  for net in "${TEST_NETS[@]}"; do ip route del unreachable "$net" 2>/dev/null || true; done
}

status() {
  local c name idx sched routed pf
  printf '%-22s %-32s %s\n' HOST ADDRESS DAEMONS
  printf '%-22s %-32s %s\n' "fileserver (root ns)" "$FS_IP ($FS_DEV)" \
    "$(for pf in "$ST/munged.pid" "$ST/acct/mariadb.pid" "$ST/acct/slurmdbd.pid"; do daemon_state "$pf"; done)"
  for c in "${CLUSTERS[@]}"; do
    read -r name idx sched routed <<<"$c"
    local up=down; [[ -e /run/netns/$name-login ]] && up=up
    printf '%-22s %-32s %s\n' "$name-login [$up]" "$(login_up "$idx") / $(login_in "$idx")" \
      "$(for pf in "$ST/$name/sshd.pid" "$ST/$name/sshd-otp.pid" "$ST/$name/slurmctld.pid"; do daemon_state "$pf"; done)"
    printf '%-22s %-32s %s\n' "$name-node" "$(node_ip "$idx") ($( ((routed)) && echo routed || echo 'no route to fileserver'))" \
      "$(for pf in "$ST/$name/slurmd.pid" "$ST/$name/mom.pid" "$ST/$name/sshd-node.pid"; do daemon_state "$pf"; done)"
  done
}
daemon_state() {
  [[ -e $1 ]] || return 0
  local n; n=$(basename "$1" .pid)
  if alive_pid "$1"; then printf '%s:%s ' "$n" "$(tr -dc 0-9 <"$1")"; else printf '%s:DOWN ' "$n"; fi
}

# ---------------------------------------------------------------- purge
purge() {
  down
  if [[ -e /tmp/pilot-infra/state/sshd1_config ]]; then   # the earlier loopback layout left its daemons and files
    stop_pids /tmp/pilot-infra/state/sshd{1,2,3,4}.pid:/usr/sbin/sshd /run/slurmd{,-c2}.pid:/usr/sbin/slurmd \
      /run/slurmctld{,-c2}.pid:/usr/sbin/slurmctld
    stop_pids /run/slurmdbd.pid:/usr/sbin/slurmdbd /run/mysqld/mysqld.pid:/usr/sbin/mariadbd \
      /run/munge/munged.pid:/usr/sbin/munged
    grep -qs '^# generated by' /etc/slurm/slurm.conf && rm -f /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
    rm -rf /etc/slurm-c2 /var/lib/slurm-c2 /var/log/slurm-c2 /run/slurmctld-c2.pid /run/slurmd-c2.pid
  fi
  # what today's layout left: state, keys, venvs, emulator dirs
  rm -rf "$BASE" /tmp/pilot-infra "$VENV" "$EMU" /var/tmp/pilot-emu-* /tmp/pilot-venv.lock /tmp/pilot-apt.log "$KEYS"
  rm -f "/etc/pam.d/$OTP_PAM"
  rm -rf /tmp/pilot-remote-* /tmp/pilot-lpserver-* /tmp/pilot-bench-* /tmp/pilot-sshd-*
  if id -u "$TEST_USER" >/dev/null 2>&1; then
    pkill -KILL -u "$TEST_USER" 2>/dev/null || true
    userdel -r "$TEST_USER" >/dev/null 2>&1 || userdel "$TEST_USER" || true
    log "removed user $TEST_USER"
  fi
  local u; for u in $(getent passwd | cut -d: -f1 | grep -E '^pb[0-9a-f]{6}$' || true); do userdel -r "$u" 2>/dev/null || true; done
  python3 -m pip uninstall -y -q fireworks-pilot >/dev/null 2>&1 || true
  if [[ ${PURGE_PACKAGES:-0} == 1 && -s $PKG_RECORD ]]; then
    # only what the suite itself installed (never what the machine came with); dpkg refuses, instead of
    # removing, any other package that depends on them; their own dependencies stay
    local pkgs; mapfile -t pkgs < <(sort -u "$PKG_RECORD")
    dpkg --purge "${pkgs[@]}" >"/tmp/pilot-purge.log" 2>&1 || { tail -20 /tmp/pilot-purge.log; die "dpkg --purge ${pkgs[*]} failed"; }
    rm -f /tmp/pilot-purge.log
    local p; for p in "${pkgs[@]}"; do
      case $p in   # the state those packages keep outside dpkg's view
        mariadb-server) rm -rf /var/lib/mysql ;;
        munge) rm -rf /etc/munge /var/lib/munge /var/log/munge ;;
        slurmctld|slurmd|slurmdbd) rm -rf /var/lib/slurm /var/log/slurm ;;
      esac
    done
    rm -f "$PKG_RECORD"
    log "removed the Debian packages the suite had installed: ${pkgs[*]}"
  fi
  log "purged: the next 'up' starts as on a new machine"
}

install_emulators() { # [KIND...]: copy tests/infra/emulators/<kind> to $EMU (the PATH of the emulated login nodes)
  local kind kinds=("$@")
  ((${#kinds[@]})) || kinds=("${EMU_KINDS[@]}")
  for kind in "${kinds[@]}"; do
    rm -rf "${EMU:?}/$kind"; install -d -m 755 "$EMU/$kind"
    cp -r "$REPO/tests/infra/emulators/$(emu_src "$kind")/." "$EMU/$kind/"
    cp "$REPO/tests/infra/emulators/common/"*.py "$EMU/$kind/lib/"
    chmod -R a+rX "$EMU/$kind"; chmod a+rx "$EMU/$kind"/bin/*
    id -u "$TEST_USER" >/dev/null 2>&1 && install -d -o "$TEST_USER" -g "$TEST_USER" -m 755 "/var/tmp/pilot-emu-$kind"
  done
  return 0
}

# ---------------------------------------------------------------- hosts: links, schedulers, sshd (up and host)
net_up() { # name idx routed
  local n=$1 i=$2 routed=$3
  ip netns add "$n-login"; ip netns add "$n-node"
  ip link add "pfs-$n" type veth peer name up0 netns "$n-login"
  ip addr add "$(fs_side "$i")/28" dev "pfs-$n"; ip link set "pfs-$n" up
  in_login "$n" ip addr add "$(login_up "$i")/28" dev up0
  in_login "$n" ip link set up0 up; in_login "$n" ip link set lo up
  in_login "$n" ip link add in0 type veth peer name eth0 netns "$n-node"
  in_login "$n" ip addr add "$(login_in "$i")/28" dev in0; in_login "$n" ip link set in0 up
  in_node "$n" ip addr add "$(node_ip "$i")/28" dev eth0; in_node "$n" ip link set eth0 up; in_node "$n" ip link set lo up
  in_login "$n" ip route add "$FS_IP/32" via "$(fs_side "$i")"     # the login node reaches the fileserver
  if ((routed)); then
    in_login "$n" sysctl -qw net.ipv4.ip_forward=1
    in_node "$n" ip route add "$FS_IP/32" via "$(login_in "$i")"
    ip route replace "$(inner_net "$i")" via "$(login_up "$i")"
  else
    in_login "$n" sysctl -qw net.ipv4.ip_forward=0
  fi
}

write_slurm_conf() { # name idx dir
  local n=$1 i=$2 d=$3 acct gres="" gpu_node="" gpu_part=""
  if [[ $n == pilotci2 ]]; then
    # pilotci2's node has four GPUs and a gpu partition (queue profiles are tested on them). slurmd takes a GPU
    # only with a device file (File=); the box has none, so these are character devices of NVIDIA's major
    # number that no driver backs: nothing opens them, SLURM only counts them and sets CUDA_VISIBLE_DEVICES
    for g in 0 1 2 3; do [[ -c $d/nvidia$g ]] || mknod -m 600 "$d/nvidia$g" c 195 "$g"; done
    echo "NodeName=${n}node Name=gpu File=$d/nvidia[0-3]" >"$d/gres.conf"
    gres=$'GresTypes=gpu\nAccountingStorageTRES=gres/gpu'; gpu_node=" Gres=gpu:4"
    gpu_part="PartitionName=gpu Nodes=${n}node MaxTime=INFINITE State=UP"
  fi
  if ((ACCOUNTING)); then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$FS_IP
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  else
    acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
  fi
  cat >"$d/slurm.conf" <<EOF
# generated by tests/infra/services.sh: cluster $n, controller on its login node, slurmd on its compute node
ClusterName=$n
SlurmctldHost=localhost($(login_in "$i"))
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$d/ctld
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
# no cgroups: works without a delegated cgroup tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$d/log/jobcomp.log
SchedulerType=sched/backfill
# schedule a batch job when it is submitted, not up to 3 s later (slurm.conf(5) batch_sched_delay, default 3:
# for sites that submit thousands of jobs a minute); every pilot and probe job of the suite starts ~1 s sooner
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# advertise more CPUs than the box has so tests can run many pilots at once
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=2
InactiveLimit=0
MpiDefault=none
$gres
NodeName=${n}node NodeAddr=$(node_ip "$i") CPUs=8 RealMemory=4000${gpu_node} State=UNKNOWN
PartitionName=debug Nodes=${n}node Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=${n}node MaxTime=00:05:00 State=UP
$gpu_part
EOF
}

start_slurm() { # name idx
  local n=$1 i=$2 d=$ST/$1 st=""
  install -d -o slurm -g slurm "$d/ctld" "$d/spool" "$d/log"
  write_slurm_conf "$n" "$i" "$d"
  in_login "$n" /usr/sbin/slurmctld -f "$d/slurm.conf"
  for _ in $(seq 200); do SLURM_CONF=$d/slurm.conf in_login "$n" scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  SLURM_CONF=$d/slurm.conf in_login "$n" scontrol ping | grep -q UP || die "slurmctld ($n) not up: $(tail -3 "$d/log/slurmctld.log")"
  SLURM_CONF=$d/slurm.conf in_node "$n" /usr/sbin/slurmd -f "$d/slurm.conf" -N "${n}node"   # gres.conf beside it
  for _ in $(seq 300); do
    st=$(SLURM_CONF=$d/slurm.conf in_login "$n" sinfo -h -n "${n}node" -o %T 2>/dev/null | head -1 || true)
    [[ $st == idle || $st == mixed || $st == allocated ]] && break; sleep 0.1
  done
  [[ $st == idle || $st == mixed || $st == allocated ]] || die "node ${n}node not up ($st): $(tail -3 "$d/log/slurmd.log")"
}

start_mom() { # name kind: the emulated scheduler's execution daemon, root, on the compute node
  local n=$1 kind=$2 d=$ST/$1
  install -d -o "$TEST_USER" -g "$TEST_USER" -m 755 "/var/tmp/pilot-emu-$kind"   # the default job table
  if [[ $kind == torque ]]; then   # Torque job ids: <seq>.torqueemu
    printf '{"server": "torqueemu"}\n' >"/var/tmp/pilot-emu-torque/config.json"; chmod 644 "/var/tmp/pilot-emu-torque/config.json"
  fi
  if [[ $kind == pbs ]]; then   # a GPU queue beside the default one: queue profiles are tested on it
    printf '{"queues": ["workq", "gpu"]}\n' >"/var/tmp/pilot-emu-pbs/config.json"; chmod 644 "/var/tmp/pilot-emu-pbs/config.json"
  fi
  rm -rf "$d/spool"; install -d -m 1777 "$d/spool"   # like /tmp: anyone may leave a request; no stale ones
  rm -f "$d/mom.pid"
  PILOT_EMU_EXEC_SPOOL=$d/spool PILOT_EMU_EXEC_PIDFILE=$d/mom.pid setsid -f nsenter --net="/run/netns/$n-node" \
    /usr/bin/python3 "$EMU/$kind/lib/$(emu_src "$kind")emu.py" mom </dev/null >>"$d/log/mom.log" 2>&1
  for _ in $(seq 50); do alive_pid "$d/mom.pid" && break; sleep 0.1; done
  alive_pid "$d/mom.pid" || die "execution daemon ($n) not up: $(tail -3 "$d/log/mom.log")"
}

write_sshd_conf() { # file addr pidfile hostkey extra...  (SSHD_OTP=1: key, then a one-time password)
  local f=$1 addr=$2 pf=$3 hk=$4 port=22 pam=no kbd=no; shift 4
  if [[ ${SSHD_OTP:-0} == 1 ]]; then port=$OTP_PORT pam=yes kbd="yes
AuthenticationMethods publickey,keyboard-interactive:pam"
    # OpenSSH 9.8 and newer name the PAM service in the config (before, sshd took its program name)
    if [[ $(/usr/sbin/sshd -V 2>&1) =~ OpenSSH_([0-9]+)\.([0-9]+) ]] \
       && (( BASH_REMATCH[1] > 9 || (BASH_REMATCH[1] == 9 && BASH_REMATCH[2] >= 8) )); then
      kbd+="
PAMServiceName $OTP_PAM"
    fi
  fi
  cat >"$f" <<EOF
ListenAddress $addr:$port
HostKey $hk
PidFile $pf
AllowUsers $TEST_USER
PubkeyAuthentication yes
# the usual file, and a root-owned copy: a test that upsets a home directory cannot lock every later test out
AuthorizedKeysFile .ssh/authorized_keys $KEYS/authorized_keys.%u
PasswordAuthentication no
KbdInteractiveAuthentication $kbd
PermitRootLogin no
UsePAM $pam
StrictModes yes
MaxStartups 100:30:200
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  local l; for l in "$@"; do echo "$l" >>"$f"; done
}

start_sshd() { # name netns addr conf-name extra...: sshd in a namespace; its host key goes to known_hosts
  local n=$1 ns=$2 addr=$3 which=$4 d=$ST/$1; shift 4
  [[ -s $d/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "$n" -f "$d/ssh_host_ed25519_key"
  write_sshd_conf "$d/$which.config" "$addr" "$d/$which.pid" "$d/ssh_host_ed25519_key" "$@"
  /usr/sbin/sshd -t -f "$d/$which.config"
  nsenter --net="/run/netns/$ns" /usr/sbin/sshd -f "$d/$which.config" -E "$d/log/$which.log"
  wait_tcp "$ns" "$addr" 22 10 || die "$which ($n, $addr) not listening: $(tail -3 "$d/log/$which.log")"
  echo "$addr $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$ST/ssh/known_hosts"
}

start_otp_sshd() { # name addr extra...: the login node's second sshd, key + TOTP code (pam_oath), on $OTP_PORT
  local n=$1 addr=$2 d=$ST/$1; shift 2
  SSHD_OTP=1 write_sshd_conf "$d/sshd-otp.config" "$addr" "$d/sshd-otp.pid" "$d/ssh_host_ed25519_key" "$@"
  ln -sfn /usr/sbin/sshd "$d/$OTP_PAM"   # sshd's PAM service is its program name: /etc/pam.d/$OTP_PAM
  "$d/$OTP_PAM" -t -f "$d/sshd-otp.config"
  nsenter --net="/run/netns/$n-login" "$d/$OTP_PAM" -f "$d/sshd-otp.config" -E "$d/log/sshd-otp.log"
  wait_tcp "$n-login" "$addr" "$OTP_PORT" 10 || die "sshd-otp ($n, $addr:$OTP_PORT) not listening: $(tail -3 "$d/log/sshd-otp.log")"
  echo "[$addr]:$OTP_PORT $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$ST/ssh/known_hosts"
}

EPATH=/usr/local/bin:/usr/bin:/bin
start_cluster() { # name idx sched routed: scheduler (or emulator) and sshd of one cluster; sets CLUSTER_JSON
  local name=$1 idx=$2 sched=$3 routed=$4 d=$ST/$1 extra=() node_ssh="" conf="" t
  t=$(now); install -d -m 755 "$d" "$d/log"
  case $sched in
    slurm) start_slurm "$name" "$idx"; extra=("SetEnv SLURM_CONF=$d/slurm.conf") ;;
    pbs|lsf|sge|torque) start_mom "$name" "$sched"
       local flavor=""; [[ $sched != torque ]] || flavor=" PILOT_EMU_FLAVOR=torque"   # the PBS emulator as Torque
       extra=("SetEnv PATH=$EMU/$sched/bin:$EPATH PILOT_EMU_STATE=/var/tmp/pilot-emu-$sched PILOT_EMU_EXEC_SPOOL=$d/spool$flavor") ;;
  esac
  # the login node's sshd answers on its inner address too, as real login nodes do: compute nodes reach it
  # there (the LaunchPad's ssh route: a pilot's `ssh -L` to the manager's forward on the login node)
  start_sshd "$name" "$name-login" "$(login_up "$idx")" sshd "ListenAddress $(login_in "$idx"):22" "${extra[@]}"
  if ((!routed)); then   # a compute node reached only through its login node (ProxyJump tests)
    start_sshd "$name" "$name-node" "$(node_ip "$idx")" sshd-node "${extra[@]}"
    node_ssh="$(node_ip "$idx")"
  fi
  T[$name]=$(since "$t")
  local otp=null
  if [[ $name == "$OTP_CLUSTER" ]]; then start_otp_sshd "$name" "$(login_up "$idx")" "${extra[@]}"; otp=$OTP_PORT; fi
  [[ $sched != slurm ]] || conf=$d/slurm.conf
  CLUSTER_JSON="$(printf '{"name": "%s", "scheduler": "%s", "host": "%s", "login_inner": "%s", "node": "%s", "routed": %s, "login_netns": "%s", "node_netns": "%s", "slurm_conf": "%s", "sshd_config": "%s", "node_sshd": "%s", "host_key": "%s", "otp_port": %s}' \
    "$name" "$sched" "$(login_up "$idx")" "$(login_in "$idx")" "$(node_ip "$idx")" \
    "$( ((routed)) && echo true || echo false)" "$name-login" "$name-node" "$conf" "$d/sshd.config" "$node_ssh" \
    "$d/ssh_host_ed25519_key" "$otp")"
}

one_host() { # name: (re)start that cluster alone, touching nothing else; the rest of the services must be up
  [[ $(id -u) == 0 ]] || die "must run as root"
  local want=$1 c name idx sched routed found=""
  for c in "${CLUSTERS[@]}"; do read -r name idx sched routed <<<"$c"; [[ $name == "$want" ]] && found=$c && break; done
  [[ -n $found ]] || die "no cluster '$want' in CLUSTERS (the table at the top of $0)"
  [[ -s $ST/clusters.json && -s $ST/ssh/id_ed25519 ]] && id -u "$TEST_USER" >/dev/null 2>&1 \
    || die "the services are not up ($ST/clusters.json missing): run '$0 up' first"
  [[ $sched == slurm ]] && die "'host' starts emulated clusters only; $name (slurm) needs munge and slurmdbd: use '$0 up'"
  read -r name idx sched routed <<<"$found"
  # stop this host alone: its daemons by their PID files, what runs in its namespaces, its link and routes
  stop_pids $(cluster_pidfiles "$name" "$sched")
  kill_in_netns "$name-node"; kill_in_netns "$name-login"
  ip link del "pfs-$name" 2>/dev/null || true
  ip route del "$(inner_net "$idx")" 2>/dev/null || true
  ip netns del "$name-node" 2>/dev/null || true
  ip netns del "$name-login" 2>/dev/null || true
  net_up "$name" "$idx" "$routed"
  install_emulators "$sched"
  local addr; for addr in "$(login_up "$idx")" "$(login_in "$idx")" "$(node_ip "$idx")"; do   # this host's old keys
    sed -i "/^${addr//./\\.} /d" "$ST/ssh/known_hosts"
  done
  start_cluster "$name" "$idx" "$sched" "$routed"
  chmod 644 "$ST/ssh/known_hosts"
  python3 - "$ST/clusters.json" "$CLUSTER_JSON" <<'PY' || die "cannot update clusters.json"
import json, os, sys
path, entry = sys.argv[1], json.loads(sys.argv[2])
data = json.load(open(path))
data["clusters"] = [c for c in data["clusters"] if c["name"] != entry["name"]] + [entry]
tmp = path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(data, fh)
os.chmod(tmp, 0o644)
os.replace(tmp, path)
PY
  log "host $name up: $(login_up "$idx") / $(login_in "$idx"), node $(node_ip "$idx") (${T[$name]} s)"
}


case "${1:-up}" in
  down) down; exit 0 ;;
  status) status; exit 0 ;;
  purge) [[ $(id -u) == 0 ]] || die "must run as root"; purge; exit 0 ;;
  emulators) install_emulators; exit 0 ;;
  host) [[ -n ${2:-} ]] || die "usage: $0 host NAME"; one_host "$2"; exit 0 ;;
  up) ;;
  *) die "usage: $0 up|down|status|purge|emulators|host NAME" ;;
esac
[[ $(id -u) == 0 ]] || die "must run as root"
T0=$(now)
install -d -m 755 "$BASE"

# ---------------------------------------------------------------- 1. packages
t=$(now)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  made_policy=0   # keep maintainer scripts from starting services (no systemd / init here)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT   # also when the install fails
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$BASE/apt-install.log" 2>&1 \
    || { tail -30 "$BASE/apt-install.log"; die "apt-get install failed"; }
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  printf '%s\n' "${missing[@]}" >>"$PKG_RECORD"   # what the suite installed: `purge` with PURGE_PACKAGES=1 removes it
  log "installed ${missing[*]} in $(since "$t") s"
fi
T[apt_install]=$(since "$t")

# ---------------------------------------------------------------- 2. stop what we own
t=$(now)
down
install -d -m 755 "$ST"; install -d -m 700 "$ST/ssh"
T[stop_previous]=$(since "$t")

# ---------------------------------------------------------------- 3. hosts and links
t=$(now)
check_addresses
[[ $(sysctl -n net.ipv4.ip_forward) == 0 ]] || log "note: this machine forwards IPv4; the test namespaces send nothing outside their ranges"
ip addr add "$FS_IP/32" dev "$FS_DEV"
# catch-alls: whatever in our ranges has no more specific route (the unrouted compute node, a cluster that is
# down) is unreachable here instead of following the default route out of the machine
for net in "${TEST_NETS[@]}"; do ip route replace unreachable "$net"; done
for c in "${CLUSTERS[@]}"; do read -r name idx sched routed <<<"$c"; net_up "$name" "$idx" "$routed"; done
T[network]=$(since "$t")

# ---------------------------------------------------------------- 4. munge (root namespace; its socket serves all)
t=$(now)
[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
install -d -o munge -g munge -m 0755 "$ST/munge"
runuser -u munge -- /usr/sbin/munged --pid-file="$ST/munge/munged.pid"
for _ in $(seq 50); do [[ -s $ST/munge/munged.pid ]] && break; sleep 0.1; done
cp "$ST/munge/munged.pid" "$ST/munged.pid"
munge -n | unmunge >/dev/null || die "munge round trip failed"
T[munge]=$(since "$t")

# ---------------------------------------------------------------- 5. test user and keys
t=$(now)
id -u "$TEST_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TEST_USER"
usermod -p '*' "$TEST_USER"   # '!' (useradd's default) = locked: sshd refuses even a key when UsePAM=no
H=$(getent passwd "$TEST_USER" | cut -d: -f6)
[[ -s $ST/ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C "pilot-ci" -f "$ST/ssh/id_ed25519"
install -d -o "$TEST_USER" -g "$TEST_USER" -m 700 "$H/.ssh"
install -o "$TEST_USER" -g "$TEST_USER" -m 600 "$ST/ssh/id_ed25519.pub" "$H/.ssh/authorized_keys"
install -d -m 755 "$KEYS"; install -m 644 "$ST/ssh/id_ed25519.pub" "$KEYS/authorized_keys.$TEST_USER"
install -d -m 0755 /run/sshd   # privilege-separation dir, normally made by systemd
# the TOTP seed of the one-time-password sshd: root's alone (the tests read it to make codes, as an authenticator
# app would); pam_oath reads the hex form and keeps the last code used beside it, so no code works twice
install -d -m 700 "$KEYS/otp"
[[ -s $KEYS/otp/$TEST_USER.seed ]] || (umask 077; python3 -c 'import base64, os; print(base64.b32encode(os.urandom(20)).decode(), end="")' \
  >"$KEYS/otp/$TEST_USER.seed")
(umask 077; printf 'HOTP/T30/6 %s - %s\n' "$TEST_USER" \
  "$(python3 -c 'import base64, sys; print(base64.b32decode(open(sys.argv[1]).read()).hex())' "$KEYS/otp/$TEST_USER.seed")" \
  >"$KEYS/otp/users.oath")
cat >"/etc/pam.d/$OTP_PAM" <<EOF
# fireworks-pilot's test suite (tests/infra/services.sh): the one-time-password sshd of test cluster $OTP_CLUSTER
auth     requisite  pam_oath.so usersfile=$KEYS/otp/users.oath window=4 digits=6
account  required   pam_permit.so
session  required   pam_permit.so
EOF
: >"$ST/ssh/known_hosts"
T[user_keys]=$(since "$t")

# ---------------------------------------------------------------- 6. accounting: MariaDB + slurmdbd (fileserver)
if ((ACCOUNTING)); then
  t=$(now)
  A=$ST/acct; install -d -m 755 "$A"; install -d -o mysql -g mysql -m 700 "$A/mysql"
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [[ -d $A/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir="$A/mysql" >"$A/mariadb-install.log" 2>&1 \
    || { tail -20 "$A/mariadb-install.log"; die "mariadb-install-db failed"; }
  setsid -f /usr/sbin/mariadbd --user=mysql --datadir="$A/mysql" --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file="$A/mysql/mariadb.pid" --log-error="$A/mariadb.err" </dev/null >/dev/null 2>&1
  for _ in $(seq 300); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  DBPW=$(head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9)
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost'; ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPW';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || die "mariadb not up: $(tail -5 "$A/mariadb.err")"
  cp "$A/mysql/mariadb.pid" "$A/mariadb.pid"
  T[mariadb]=$(since "$t"); t=$(now)
  # slurmdbd finds slurmdbd.conf next to $SLURM_CONF; a minimal slurm.conf for the fileserver's own commands
  install -d -o slurm -g slurm -m 755 "$A/log"
  printf '%s\n' AuthType=auth/munge "DbdAddr=$FS_IP" "DbdHost=localhost" "DbdPort=$DBD_PORT" SlurmUser=slurm \
    "PidFile=$A/slurmdbd.pid" "LogFile=$A/log/slurmdbd.log" StorageType=accounting_storage/mysql \
    StorageHost=localhost "StoragePort=3306" "StorageLoc=slurm_acct_db" StorageUser=slurm "StoragePass=$DBPW" \
    >"$A/slurmdbd.conf"
  chown slurm:slurm "$A/slurmdbd.conf"; chmod 600 "$A/slurmdbd.conf"
  printf '%s\n' ClusterName=fileserver SlurmctldHost=localhost AuthType=auth/munge \
    AccountingStorageType=accounting_storage/slurmdbd "AccountingStorageHost=$FS_IP" \
    "AccountingStoragePort=$DBD_PORT" >"$A/slurm.conf"
  # MariaDB listens on its Unix socket only (/run/mysqld/mysqld.sock), where slurmdbd reaches it
  SLURM_CONF=$A/slurm.conf /usr/sbin/slurmdbd
  for _ in $(seq 300); do SLURM_CONF=$A/slurm.conf sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1 && break; sleep 0.1; done
  have=$(SLURM_CONF=$A/slurm.conf sacctmgr -n -P list cluster format=cluster) \
    || die "slurmdbd not answering: $(tail -5 "$A/log/slurmdbd.log")"
  for c in "${CLUSTERS[@]}"; do
    read -r name idx sched routed <<<"$c"
    [[ $sched == slurm ]] || continue
    grep -qx "$name" <<<"$have" || SLURM_CONF=$A/slurm.conf sacctmgr -i add cluster "$name" >/dev/null
  done
  T[slurmdbd]=$(since "$t")
fi

# ---------------------------------------------------------------- 7. per cluster: scheduler + sshd
install_emulators
json_clusters=()
for c in "${CLUSTERS[@]}"; do
  read -r name idx sched routed <<<"$c"
  start_cluster "$name" "$idx" "$sched" "$routed"
  json_clusters+=("$CLUSTER_JSON")
done
chmod 644 "$ST/ssh/known_hosts"

# ---------------------------------------------------------------- 8. cluster-side venv
# The pilot worker runs inside batch jobs as $TEST_USER with Debian's python3: give it a venv it can read,
# with this project and its dependencies (tests/conftest.py refreshes the project with --no-deps).
t=$(now)
PY=$VENV/bin/python
# built from a clean copy: the tree's own build/lib keeps modules that have since moved (tests/helpers.py
# clean_source_copy does the same for the tests' reinstalls)
SRC=$(mktemp -d /tmp/pilot-src.XXXXXX)
cp -r "$REPO"/{pilot,queue_adapters,tasks,templates,pyproject.toml,README.md} "$SRC/"
find "$SRC" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
if ! "$PY" -c 'import fireworks, paramiko, pymongo, pydantic, jinja2, click, psutil' 2>/dev/null; then
  rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >"$BASE/pip.log" 2>&1
  "$VENV/bin/pip" install -q "$SRC" >>"$BASE/pip.log" 2>&1 || { cat "$BASE/pip.log"; die "pip install into $VENV failed"; }
else
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$SRC" >"$BASE/pip.log" 2>&1 \
    || { cat "$BASE/pip.log"; die "pip install into $VENV failed"; }
fi
# the digest of what the venv was built from (tests.helpers.source_digest): tests/conftest.py's cluster_venv
# rebuilds it only when the source has changed since, not once more at the start of every test session
"$PY" -c 'import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])
from tests.helpers import source_digest; print(source_digest(Path(sys.argv[2])), end="")' "$REPO" "$SRC" \
  >"$VENV/.pilot-source-digest" 2>/dev/null || rm -f "$VENV/.pilot-source-digest"
rm -rf "$SRC"
chmod -R a+rX "$VENV"
T[cluster_venv]=$(since "$t")

( IFS=,; cat >"$ST/clusters.json" <<EOF
{"user": "$TEST_USER", "port": 22, "key": "$ST/ssh/id_ed25519", "known_hosts": "$ST/ssh/known_hosts",
 "otp_seed": "$KEYS/otp/$TEST_USER.seed",
 "venv": "$VENV", "accounting": $ACCOUNTING, "fileserver": "$FS_IP",
 "clusters": [${json_clusters[*]}]}
EOF
)
chmod 644 "$ST/clusters.json"
python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$ST/clusters.json" || die "clusters.json is not valid JSON"

T[total]=$(since "$T0")
echo "=================== start times (s) ==================="
for k in apt_install stop_previous network munge user_keys mariadb slurmdbd pilotci pilotci2 pilotci3 emupbs emulsf emusge emutorque \
         cluster_venv total; do
  [[ -n ${T[$k]:-} ]] && printf '  %-16s %s\n' "$k" "${T[$k]}"
done
status
echo "state: $ST/clusters.json; a shell on a node: nsenter --net=/run/netns/pilotci-login bash; stop: $0 down"
