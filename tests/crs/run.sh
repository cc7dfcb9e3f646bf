#!/usr/bin/env bash
# OWASP CRS 3.3.4 regression suite (the YAML tests of Debian's modsecurity-crs source package),
# run by ftw 1.3.0 against Tenantry, or against nginx + libmodsecurity for comparison, in the
# mode the suite expects: DetectionOnly, paranoia level 4, the X-CRS-Test log marker rule,
# one libmodsecurity message per log line.
#
# Usage: tests/crs/run.sh [extra pytest args, e.g. -k 920270 or -x]
#   TARGET=tenantry|nginx   what to test (default tenantry)
#   TENANTRY_BIN=path       Tenantry binary (default target/debug/tenantry; not built here)
#   CRS_MIN_PASS=N          exit 1 when fewer tests pass (default 2344, nginx's score);
#                           only applied to a full run (no extra pytest args)
#   CRS_CACHE=dir           sources, venv and run files (default target/crs-regression)
#   CRS_DIR=dir             the CRS whose rules/ are tested (default /usr/share/modsecurity-crs)
#   CRS_DEB_VERSION=v       the modsecurity-crs source version (default: the installed
#                           package's, so the tests match the rules and a Debian update does
#                           not leave CI asking for a source the mirror no longer has; with
#                           CRS_DIR elsewhere, or nothing installed, 3.3.4-1+deb12u3)
#   CRS_INSTALL=0           do not apt-get install missing system packages
# Output: "crs regression: N passed, M failed of T"; failing tests (with the failed check)
# in $CRS_CACHE/run-$TARGET/failed.txt, the WAF log in $CRS_CACHE/run-$TARGET/modsec.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/crs"
TARGET=${TARGET:-tenantry}
CACHE=${CRS_CACHE:-$ROOT/target/crs-regression}
CRS_DIR=${CRS_DIR:-/usr/share/modsecurity-crs}
CRS_DEB_VERSION=${CRS_DEB_VERSION:-}
CRS_MIN_PASS=${CRS_MIN_PASS:-2344}
TENANTRY_BIN=${TENANTRY_BIN:-$ROOT/target/debug/tenantry}
case "$TARGET" in tenantry | nginx) ;; *) echo "TARGET must be tenantry or nginx" >&2; exit 2 ;; esac
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
RUN="$CACHE/run-$TARGET"
VENV="$CACHE/venv"

export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in tests/crs

log() { printf '== crs: %s\n' "$*" >&2; }

# --- system packages ------------------------------------------------------------------------
need_pkgs=(libmodsecurity3 modsecurity-crs python3-venv)
[ "$TARGET" = nginx ] && need_pkgs+=(nginx libnginx-mod-http-modsecurity)
command -v dpkg-source >/dev/null || need_pkgs+=(dpkg-dev)
missing=()
for p in "${need_pkgs[@]}"; do
  # python3-venv is only needed when `python3 -m venv` lacks ensurepip (Debian's python3)
  if [ "$p" = python3-venv ] && python3 -c 'import ensurepip' 2>/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CRS_INSTALL:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]}" >&2
    exit 2
  fi
fi
installed=$(dpkg-query -W -f='${Version}' modsecurity-crs 2>/dev/null || true)
if [ -z "$CRS_DEB_VERSION" ]; then
  if [ "$CRS_DIR" = /usr/share/modsecurity-crs ] && [ -n "$installed" ]; then
    CRS_DEB_VERSION=$installed
  else
    CRS_DEB_VERSION=3.3.4-1+deb12u3
  fi
fi
if [ "$CRS_DIR" = /usr/share/modsecurity-crs ] && [ "$installed" != "$CRS_DEB_VERSION" ]; then
  log "warning: installed modsecurity-crs is $installed, the tests are from $CRS_DEB_VERSION"
fi
SRC="$CACHE/src/crs-$CRS_DEB_VERSION"
TESTS="$SRC/tests/regression/tests"

# --- the suite: Debian's source package, fetched with a private apt state -----------------
if [ ! -d "$TESTS" ]; then
  log "fetching modsecurity-crs $CRS_DEB_VERSION sources"
  apt_dir="$CACHE/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$CACHE/src"
  apt_opts=(
    -o "Dir::Etc::SourceList=$ROOT/.ci/apt/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o APT::Sandbox::User=root
  )
  apt-get "${apt_opts[@]}" -qq update
  dl=$(mktemp -d "$CACHE/src/dl.XXXXXX")
  (cd "$dl" && apt-get "${apt_opts[@]}" -qq source --download-only "modsecurity-crs=$CRS_DEB_VERSION")
  # Debian's patches change tests too (920620.yaml), so unpack with them applied.
  dpkg-source --no-check -x "$dl"/modsecurity-crs_*.dsc "$dl/crs" >/dev/null
  rm -rf "$SRC"
  mv "$dl/crs" "$SRC"
  rm -rf "$dl"
fi
ntests=$(find "$TESTS" -name '*.yaml' | wc -l)
[ "$ntests" -gt 0 ] || { echo "no YAML tests under $TESTS" >&2; exit 2; }

# --- ftw ------------------------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import ftw, pytest' 2>/dev/null; then
  log "creating the venv with ftw==1.3.0"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check ftw==1.3.0
fi

# --- processes we start, stopped on exit ----------------------------------------------------
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

rm -rf "$RUN"
mkdir -p "$RUN/tmp"
LOG="$RUN/modsec.log"
: >"$LOG"

# Origin: 200 to anything.
python3 "$HERE/backend.py" "$RUN/backend.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$RUN/backend.port" ] && break; sleep 0.05; done
BACKEND_PORT=$(cat "$RUN/backend.port")
PORT=$(free_port)

# The base ModSecurity configuration both targets share for nginx: Debian's
# modsecurity.conf-recommended (as shipped with libnginx-mod-http-modsecurity), with writable
# paths and no audit log.
modsec_base() {
  local src
  for src in /usr/share/nginx/docs/modsecurity/modsecurity.conf /etc/nginx/modsecurity.conf; do
    [ -f "$src" ] && break
  done
  sed -e 's/^SecRuleEngine .*/SecRuleEngine DetectionOnly/' \
    -e 's/^SecAuditEngine .*/SecAuditEngine Off/' \
    -e 's/^SecStatusEngine .*/SecStatusEngine Off/' \
    -e "s|^SecTmpDir .*|SecTmpDir $RUN/tmp/|" \
    -e "s|^SecDataDir .*|SecDataDir $RUN/tmp/|" \
    -e "s|^SecAuditLog .*|SecAuditLog $RUN/audit.log|" \
    -e "s|^SecUnicodeMapFile .*|SecUnicodeMapFile $(dirname "$src")/unicode.mapping 20127|" \
    "$src"
}

start_nginx() {
  modsec_base >"$RUN/modsecurity.conf"
  # Paranoia 4, executing paranoia 4, inbound threshold 5: Tenantry's `strict` level below.
  cat >"$RUN/rules.conf" <<EOF
Include $RUN/modsecurity.conf
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=4"
SecAction "id:900001,phase:1,nolog,pass,t:none,setvar:tx.executing_paranoia_level=4"
SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold=5,setvar:tx.outbound_anomaly_score_threshold=4"
Include /etc/modsecurity/crs/crs-setup.conf
Include $CRS_DIR/rules/*.conf
Include $HERE/crs-test.conf
EOF
  cat >"$RUN/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $RUN/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;
# libmodsecurity messages are logged at level info, one per line.
error_log $LOG info;
events { worker_connections 256; }
http {
  access_log $RUN/access.log;
  client_body_temp_path $RUN/tmp/body;
  proxy_temp_path $RUN/tmp/proxy;
  fastcgi_temp_path $RUN/tmp/fastcgi;
  uwsgi_temp_path $RUN/tmp/uwsgi;
  scgi_temp_path $RUN/tmp/scgi;
  server {
    listen 127.0.0.1:$PORT default_server;
    server_name localhost;
    # nginx's defaults otherwise, as in the 2344/2396 baseline. Among them
    # ignore_invalid_headers on, which drops header names with "_" or "." (6 of 933110's
    # tests send X_Filename / X.Filename); set CRS_NGINX_INVALID_HEADERS=pass to keep them.
    ignore_invalid_headers $([ "${CRS_NGINX_INVALID_HEADERS:-drop}" = pass ] && echo off || echo on);
    modsecurity on;
    modsecurity_rules_file $RUN/rules.conf;
    location / {
      proxy_pass http://127.0.0.1:$BACKEND_PORT;
      proxy_set_header Host \$host;
    }
  }
}
EOF
  nginx -e "$LOG" -p "$RUN" -c "$RUN/nginx.conf" >"$RUN/nginx.out" 2>&1 &
  pids+=($!)
}

start_tenantry() {
  [ -x "$TENANTRY_BIN" ] || { echo "no Tenantry binary at $TENANTRY_BIN (cargo build -p tenantry)" >&2; exit 2; }
  local admin_port route host i=0
  admin_port=$(free_port)
  {
    cat <<EOF
listen: 127.0.0.1:$PORT
admin: { listen: 127.0.0.1:$admin_port }
access_log: false
runtime: { threads: 1 }
upgrade_socket: $RUN/upgrade.sock
waf:
  crs: $CRS_DIR
  match_log: $LOG
  extra_rules: [$HERE/crs-test.conf]
  levels:
    strict: { paranoia: 4, executing_paranoia: 4, threshold: 5 }
tenants:
  - id: crs
    plan: enterprise
    waf: { level: strict, mode: detect }
    routes:
EOF
    # The hosts the suite's requests name (an empty or malformed Host cannot be routed).
    for host in localhost example.com 127.0.0.1 1.2.3.4; do
      i=$((i + 1))
      cat <<EOF
      - { id: r$i, host: "$host", path_prefix: /, backends: [{ address: "127.0.0.1:$BACKEND_PORT" }] }
EOF
    done
  } >"$RUN/tenantry.yaml"
  env -u TENANTRY_STORE -u TENANTRY_REDIS -u TENANTRY_DATA_DIR \
    "$TENANTRY_BIN" serve --config "$RUN/tenantry.yaml" --data-dir "$RUN/data" >"$RUN/tenantry.out" 2>&1 &
  pids+=($!)
}

log "target $TARGET on 127.0.0.1:$PORT, origin on 127.0.0.1:$BACKEND_PORT"
"start_$TARGET"

# Ready when a marker request's line reaches the log (the WAF is loaded and logging).
ready=0
for i in $(seq 600); do
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
  if curl -s -o /dev/null --max-time 2 -H 'Host: localhost' -H "X-CRS-Test: ready-$i." \
    "http://127.0.0.1:$PORT/" && grep -q "X-CRS-Test ready-" "$LOG"; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "$TARGET did not get ready (no marker line in $LOG); its output:" >&2
  tail -n 30 "$RUN"/*.out "$LOG" >&2 || true
  exit 1
fi

# --- the suite ------------------------------------------------------------------------------
log "running $ntests YAML files with ftw"
start=$(date +%s)
set +e
(cd "$HERE" && "$VENV/bin/python" -m pytest -p no:cacheprovider -q --tb=no -o console_output_style=count \
  test_crs.py --ruledir_recurse="$TESTS" --crs-target="127.0.0.1:$PORT" --crs-log="$LOG" \
  --crs-results="$RUN/results.json" "$@") >"$RUN/pytest.out" 2>&1
rc=$?
set -e
tail -n 3 "$RUN/pytest.out" >&2
if [ ! -f "$RUN/results.json" ]; then
  echo "pytest did not run (exit $rc); see $RUN/pytest.out" >&2
  tail -n 40 "$RUN/pytest.out" >&2
  exit 1
fi
read -r passed failed < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for name, msg in sorted(r["failures"].items()):
        f.write("%s\t%s\n" % (name, msg))
print(r["passed"], r["failed"])' "$RUN/results.json" "$RUN/failed.txt")
total=$((passed + failed))
log "suite took $(($(date +%s) - start)) s; failing tests in $RUN/failed.txt"
echo "crs regression: $passed passed, $failed failed of $total"
if [ $# -eq 0 ] && [ "$passed" -lt "$CRS_MIN_PASS" ]; then
  echo "crs regression: fewer than CRS_MIN_PASS=$CRS_MIN_PASS passed" >&2
  exit 1
fi
