#!/usr/bin/env bash
# The one command that runs the whole suite on a fresh Debian 12 machine (README: "Run the tests").
#   - as root: installs the system packages (GROMACS, Chromium and its driver, SLURM, munge, MariaDB, OpenSSH)
#     and starts the real test services (tests/infra/services.sh), then stops them by PID when pytest ends;
#   - installs this package with its test extra (and the md extra: OpenMM, matplotlib);
#   - runs ruff and mypy (a finding stops the run), then pytest with any arguments you pass
#     (e.g. tests/run.sh -k launchpad -x).
# Set MONGODB_URI=mongodb://host:port to run the LaunchPad tests against a real MongoDB instead of the
# embedded server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { printf '[run.sh %s] %s\n' "$(date +%T)" "$*"; }

if [[ $(id -u) == 0 ]]; then
  # chromium + chromium-driver: the dashboard's browser tests (tests/dashboard; Selenium drives Debian's
  # /usr/bin/chromedriver, never a downloaded one)
  SYS_PKGS=(gromacs chromium chromium-driver)
  missing=()
  for p in "${SYS_PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    t0=$SECONDS
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/pilot-apt.log 2>&1 \
      || { tail -30 /tmp/pilot-apt.log; exit 1; }
    printf '%s\n' "${missing[@]}" >>/var/lib/pilot-test-packages.list   # for services.sh purge
    log "installed ${missing[*]} in $((SECONDS - t0)) s"
    rm -f /tmp/pilot-apt.log
  fi
else
  log "not root: the SLURM/SSH/emulated-cluster tests will be skipped (they need tests/infra/services.sh as root)"
fi

log "installing fireworks-pilot with its test and md extras"
t0=$SECONDS
"$PY" -m pip install -q --disable-pip-version-check -e ".[test,md]"
log "pip install took $((SECONDS - t0)) s"

# lint and types are habits, not afterthoughts: a finding stops the run before the (long) suite starts
log "ruff check (pyproject.toml [tool.ruff])"
"$PY" -m ruff check --quiet .
log "mypy (pyproject.toml [tool.mypy]: pilot, queue_adapters, tasks)"
"$PY" -m mypy --no-error-summary

started=0
if [[ $(id -u) == 0 && ${PILOT_NO_SERVICES:-0} != 1 ]]; then
  log "starting the test services (tests/infra/services.sh up)"
  bash tests/infra/services.sh up
  started=1
fi
# (an `if`, not `((started)) && ...`: a false test as the trap's last command would make the run exit 1)
stop() { if ((started)); then log "stopping the test services"; bash tests/infra/services.sh down; fi; }
trap stop EXIT

# every test's time (setup + call + teardown) in a JUnit XML beside the run's other logs, outside the tree
# (PILOT_TEST_LOG_DIR, default /tmp/pilot-test-logs), so that a later session sees where the time went
junit_dir=${PILOT_TEST_LOG_DIR:-/tmp/pilot-test-logs}
mkdir -p "$junit_dir"
junit="$junit_dir/pytest-$(date -u +%Y%m%dT%H%M%SZ).xml"
log "running pytest (per-test durations: $junit)"
"$PY" -m pytest --junitxml="$junit" "$@"
