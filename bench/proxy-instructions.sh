#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not drift with
# the VM's speed, for A/B comparisons of changes on the request path (wall-clock runs of
# proxy-vs-nginx.sh spread by 10-20% from hour to hour on this machine).
#
#   bash bench/proxy-instructions.sh                       # target/release/tenantry
#   TENANTRY_BIN=/tmp/a bash bench/proxy-instructions.sh   # another build, e.g. the old one
#   ANNOTATE=1 bash bench/proxy-instructions.sh            # also print the top functions
#   LIMIT=local bash bench/proxy-instructions.sh            # with an in-process rate limit
#   LIMIT=redis bash bench/proxy-instructions.sh            # ... decided on Redis (REDIS_URL)
#   ACCESS_LOG=1 bash bench/proxy-instructions.sh          # with the JSON access log (to /dev/null)
#
# What it does: one nginx backend process (two ports, as in proxy-vs-nginx.sh), Tenantry
# under `valgrind --tool=callgrind --instr-atstart=no` with the same tenant, route and
# settings as proxy-vs-nginx.sh's tenantry-nolog (runtime.threads 1, no access log unless ACCESS_LOG=1, the
# tenant moved to an "unlimited" plan through the admin API). With LIMIT=local or redis, the
# route gets limits.sh's never-refusing limit (`ratelimit: {requests_per_minute: 100000000,
# burst: 1000000, key: route}`); with redis the gateway also gets `--redis REDIS_URL`
# (default redis://127.0.0.1:6379): one EVALSHA per request. After a WARMUP wrk run,
# instrumentation is switched on (`callgrind_control -i on`) for one `wrk -t1 -cCONNS
# -dDURATION` run, then dumped. It prints the process's user-space instructions (Ir) during
# that run divided by the requests wrk completed. Kernel work (the syscalls, about three
# quarters of the CPU time per request on this machine) is not counted: compare this figure
# between builds, not with nginx.
#
# Knobs: DURATION=8s WARMUP=3s CONNS=16 PORT=29086 (admin PORT+10) BACKEND_PORT1=18001
# BACKEND_PORT2=18002 OUT_DIR=<tmp dir, kept>; VALGRIND_BIN NGINX_BIN WRK_BIN. Only 127.0.0.1
# is used.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-16}
PORT=${PORT:-29086}
ADMIN_PORT=$((PORT + 10))
BACKEND_PORT1=${BACKEND_PORT1:-18001}
BACKEND_PORT2=${BACKEND_PORT2:-18002}
ANNOTATE=${ANNOTATE:-0}
LIMIT=${LIMIT:-}
ACCESS_LOG=${ACCESS_LOG:-0}
[[ $ACCESS_LOG =~ ^[01]$ ]] || die "ACCESS_LOG must be 0 or 1, got '$ACCESS_LOG'"
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
[[ $LIMIT =~ ^(|local|redis)$ ]] || die "LIMIT must be empty, local or redis, got '$LIMIT'"
OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-bench.XXXXXX)}
HOST_HEADER=acme.localhost
BG_PIDS=()
trap cleanup_bg EXIT

VALGRIND=$(find_bin valgrind "${VALGRIND_BIN:-}") || die "valgrind not found (apt-get install valgrind)"
CALLGRIND_CONTROL=$(find_bin callgrind_control) || die "callgrind_control not found (part of valgrind)"
NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install nginx)"
WRK=$(find_bin wrk "${WRK_BIN:-}") || die "wrk not found (apt-get install wrk)"
ensure_tenantry
require_free_port "$PORT" "$ADMIN_PORT" "$BACKEND_PORT1" "$BACKEND_PORT2"
mkdir -p "$OUT/backend" "$OUT/tenantry"

backend_pair_conf "$OUT/backend" "$NGINX" "$BACKEND_PORT1" "$BACKEND_PORT2" >"$OUT/backend/nginx.conf"
nginx_cmd "$NGINX" "$OUT/backend" "$OUT/backend/nginx.conf"
start_bg /dev/null "$OUT/backend/stderr.log" "${NGINX_CMD[@]}"
wait_http "http://127.0.0.1:$BACKEND_PORT1/" localhost "$SPAWNED_PID" "$OUT/backend/stderr.log" 10 ||
    die "backend nginx did not come up"

cat >"$OUT/tenantry/tenantry.yaml" <<EOF
# as proxy-vs-nginx.sh's tenantry-nolog (or tenantry, with ACCESS_LOG=1)
listen: 127.0.0.1:$PORT
admin: { listen: 127.0.0.1:$ADMIN_PORT }
access_log: $( ((ACCESS_LOG)) && echo true || echo false)
runtime: { threads: 1 }
metrics: { max_tenants: 1000 }
shutdown: { drain: 0ms, grace: 2s }
upgrade_socket: $OUT/tenantry/upgrade.sock
$(acme_tenant_yaml "$HOST_HEADER" "$BACKEND_PORT1" "$BACKEND_PORT2" \
    "${LIMIT:+        ratelimit: { requests_per_minute: 100000000, burst: 1000000, key: route \}}")
EOF
redis_args=()
[[ $LIMIT != redis ]] || redis_args=(--redis "$REDIS_URL")
CG_FILE=$OUT/callgrind.out
start_bg /dev/null "$OUT/tenantry/stderr.log" env -u TENANTRY_REDIS -u TENANTRY_STORE -u TENANTRY_DATA_DIR \
    "TENANTRY_ADMIN_EMAIL=$ADMIN_EMAIL" "TENANTRY_ADMIN_PASSWORD=$ADMIN_PASSWORD" \
    "$VALGRIND" --tool=callgrind --instr-atstart=no "--callgrind-out-file=$CG_FILE" \
    "$TENANTRY_BIN" serve --config "$OUT/tenantry/tenantry.yaml" --data-dir "$OUT/tenantry/data" "${redis_args[@]}"
VG_PID=$SPAWNED_PID
wait_http "http://127.0.0.1:$PORT/" "$HOST_HEADER" "$VG_PID" "$OUT/tenantry/stderr.log" 180 ||
    die "tenantry (under valgrind) did not come up"
set_unlimited "$ADMIN_PORT" acme
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_HEADER" "http://127.0.0.1:$PORT/")
[[ $code == 200 ]] || die "a request through tenantry answered $code, expected 200"

wrk_cmd=("$WRK" -t1 "-c$CONNS" -H "Host: $HOST_HEADER")
show_cmd "${wrk_cmd[@]}" "-d$WARMUP" "http://127.0.0.1:$PORT/" :: ">/dev/null"
"${wrk_cmd[@]}" "-d$WARMUP" "http://127.0.0.1:$PORT/" >/dev/null
show_cmd "$CALLGRIND_CONTROL" -z "$VG_PID"
"$CALLGRIND_CONTROL" -z "$VG_PID" >/dev/null 2>&1
show_cmd "$CALLGRIND_CONTROL" -i on "$VG_PID"
"$CALLGRIND_CONTROL" -i on "$VG_PID" >/dev/null 2>&1
show_cmd "${wrk_cmd[@]}" "-d$DURATION" "http://127.0.0.1:$PORT/" :: ">$OUT/wrk.txt"
"${wrk_cmd[@]}" "-d$DURATION" "http://127.0.0.1:$PORT/" >"$OUT/wrk.txt"
"$CALLGRIND_CONTROL" -i off "$VG_PID" >/dev/null 2>&1
show_cmd "$CALLGRIND_CONTROL" -d "$VG_PID"
"$CALLGRIND_CONTROL" -d "$VG_PID" >/dev/null 2>&1
cleanup_bg

requests=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.txt")
[[ -z $non2xx ]] || die "wrk saw $non2xx non-2xx responses (see $OUT/wrk.txt)"
dump=$CG_FILE.1 # the dump taken by `callgrind_control -d` (the file at exit is empty)
[[ -s $dump ]] || die "no callgrind dump at $dump"
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
[[ -n $requests && $requests -gt 0 && -n $total ]] || die "could not read the request count or the total"
if ((ANNOTATE)); then
    callgrind_annotate "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -40
fi
log "tenantry $(basename "$TENANTRY_BIN")${LIMIT:+ (rate limit: $LIMIT)}: $requests requests, $total instructions, $(calc "$total / $requests" %.0f) user-space instructions per request"
log "callgrind data: $dump (callgrind_annotate --inclusive=yes $dump)"
