#!/usr/bin/env bash
# How tenantry scales with the number of routes: N tenants x 1 route each.
#
#   bash bench/route-scale.sh            # N=100000 (builds tenantry if missing)
#   N=10000 bash bench/route-scale.sh
#
# Measures, against a config of N tenants (tenant t<i>, route "web", host t<i>.bench.localhost,
# one backend 127.0.0.1:18001, access_log false):
#   - start-up time: process spawn until admin /readyz answers 200, and until a request for the
#     LAST tenant's host is proxied (200). Polling granularity is ~10 ms (one curl per poll).
#   - RSS: VmRSS (and peak VmHWM) after start-up, minus VmRSS of the same binary with a
#     1-tenant config, divided by N-1 = bytes per route.
#   - hot reload: appends tenant t<N+1> to the file, POST /admin/reload; prints the JSON answer
#     (build_ms, swap_ms), curl's time_total for the whole call, and checks the new host routes.
#   - lookup cost: median curl time_total over LOOKUP_REQS keep-alive requests (one curl
#     invocation, first request dropped) for the first, middle and last tenant and for an
#     unknown host; plus a short wrk run against the first and the last tenant if wrk exists.
# Only 127.0.0.1 is used.
#
# Knobs (environment):
#   N=100000               tenants (one route each)
#   TENANTRY_BIN=path      default target/release/tenantry, built with
#                          `cargo build --release -p tenantry` if missing
#   THREADS=1              runtime.threads of the gateway
#   BACKEND=auto           nginx (tiny server answering 200 "ok\n") | demo (tenantry demo-backends)
#                          | auto (nginx if found, else demo)
#   NGINX_BIN, WRK_BIN     default: PATH, then /usr/sbin, /usr/local/sbin
#   LISTEN_PORT=28180 ADMIN_PORT=28190 BACKEND_PORT=18001
#   LOOKUP_REQS=200        keep-alive requests per host for the curl lookup timing
#   LOOKUP_WRK=1           also run wrk (-t1 -c16 -d$LOOKUP_DURATION, default 3s) on first/last host
#                          (the plan's rate limit applies: most wrk answers are 429s, which
#                          still go through routing; use it to compare the two hosts only)
#   START_TIMEOUT=300      seconds to wait for start-up
#   PLAN=pro               plan of every generated tenant
#   WAF=off                off: every tenant has `waf: { level: off }` (routing alone is measured,
#                          and it works where libmodsecurity is absent); plan: the plan's WAF level
#                          (needs libmodsecurity; requests are then inspected)
#   OUT_DIR=dir            where configs and logs go (default: new /tmp/tenantry-routes.XXXXXX,
#                          kept after the run; the N-tenant YAML is large)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-100000}
THREADS=${THREADS:-1}
BACKEND=${BACKEND:-auto}
LISTEN_PORT=${LISTEN_PORT:-28180}
ADMIN_PORT=${ADMIN_PORT:-28190}
BACKEND_PORT=${BACKEND_PORT:-18001}
LOOKUP_REQS=${LOOKUP_REQS:-200}
LOOKUP_WRK=${LOOKUP_WRK:-1}
LOOKUP_DURATION=${LOOKUP_DURATION:-3s}
START_TIMEOUT=${START_TIMEOUT:-300}
PLAN=${PLAN:-pro}
WAF=${WAF:-off}
METRICS_MAX_TENANTS=${METRICS_MAX_TENANTS:-1000}
DOMAIN=bench.localhost

[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
((N >= 2)) || die "N must be at least 2 (RSS per route compares against a 1-tenant config)"
[[ $WAF == off || $WAF == plan ]] || die "WAF must be off or plan, got '$WAF'"
WAF_LINE=
[[ $WAF == off ]] && WAF_LINE='    waf: { level: off }\n'
[[ $LOOKUP_REQS =~ ^[1-9][0-9]*$ ]] || die "LOOKUP_REQS must be a positive integer"
command -v curl >/dev/null || die "curl not found"

ensure_tenantry
case $BACKEND in
auto)
    if NGINX=$(find_bin nginx "${NGINX_BIN:-}"); then BACKEND=nginx; else BACKEND=demo; fi
    ;;
nginx) NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install -y nginx-light) or set NGINX_BIN" ;;
demo) ;;
*) die "BACKEND must be nginx, demo or auto" ;;
esac
WRK=
if [[ $LOOKUP_WRK == 1 ]]; then
    WRK=$(find_bin wrk "${WRK_BIN:-}") || {
        warn "wrk not found: skipping the wrk lookup comparison"
        WRK=
    }
fi
require_free_port "$LISTEN_PORT" "$ADMIN_PORT" "$BACKEND_PORT"

OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-routes.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT"

trap cleanup_bg EXIT
trap 'exit 130' INT TERM

log "route-scale: N=$N, output in $OUT"
log "host: $(uname -sr), $(nproc) cpus; knobs: THREADS=$THREADS BACKEND=$BACKEND LOOKUP_REQS=$LOOKUP_REQS"

# ---- backend ----------------------------------------------------------------------------
log "=== backend on 127.0.0.1:$BACKEND_PORT ($BACKEND) ==="
mkdir -p "$OUT/backend"
if [[ $BACKEND == nginx ]]; then
    cat >"$OUT/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/backend/nginx.pid;
error_log $OUT/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$OUT/backend" "$NGINX")
    server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "ok\n"; } }
}
EOF
    nginx_cmd "$NGINX" "$OUT/backend" "$OUT/backend/nginx.conf"
    start_bg /dev/null "$OUT/backend/stderr.log" "${NGINX_CMD[@]}"
else
    start_bg /dev/null "$OUT/backend/stderr.log" "$TENANTRY_BIN" demo-backends --listen "127.0.0.1:$BACKEND_PORT"
fi
BACKEND_PID=$SPAWNED_PID
wait_http "http://127.0.0.1:$BACKEND_PORT/" x "$BACKEND_PID" "$OUT/backend/stderr.log" 30 || die "backend did not come up"

# ---- configs ----------------------------------------------------------------------------
# gen_config FILE COUNT
gen_config() {
    awk -v n="$2" -v lp="$LISTEN_PORT" -v ap="$ADMIN_PORT" -v bp="$BACKEND_PORT" -v th="$THREADS" \
        -v plan="$PLAN" -v mt="$METRICS_MAX_TENANTS" -v dom="$DOMAIN" -v sock="$OUT/upgrade.sock" -v waf="$WAF_LINE" 'BEGIN {
        printf "# route-scale: %d tenants x 1 route\n", n
        printf "listen: 127.0.0.1:%s\nadmin: { listen: 127.0.0.1:%s }\naccess_log: false\n", lp, ap
        printf "runtime: { threads: %s }\nmetrics: { max_tenants: %s }\n", th, mt
        printf "shutdown: { drain: 0ms, grace: 2s }\nupgrade_socket: %s\ntenants:\n", sock
        for (i = 1; i <= n; i++) tenant(i)
    }
    function tenant(i) {
        printf "  - id: t%d\n    plan: %s\n" waf "    routes:\n      - id: web\n        host: t%d.%s\n", i, plan, i, dom
        printf "        path_prefix: /\n        algorithm: round_robin\n        backends:\n          - { address: 127.0.0.1:%s }\n", bp
    }' >"$1"
}
# the YAML block of one tenant (for the reload step)
tenant_block() {
    printf "  - id: t%d\n    plan: %s\n$WAF_LINE    routes:\n      - id: web\n        host: t%d.%s\n" "$1" "$PLAN" "$1" "$DOMAIN"
    printf '        path_prefix: /\n        algorithm: round_robin\n        backends:\n          - { address: 127.0.0.1:%s }\n' "$BACKEND_PORT"
}

CONF_1=$OUT/tenants-1.yaml
CONF_N=$OUT/tenants-$N.yaml
gen_config "$CONF_1" 1
g0=$(now_ns)
gen_config "$CONF_N" "$N"
g1=$(now_ns)
GEN_MS=$(calc "($g1 - $g0) / 1e6" %.0f)
CONF_BYTES=$(stat -c %s "$CONF_N")
log "generated $CONF_N: $(calc "$CONF_BYTES / 1048576" %.1f) MiB, $(wc -l <"$CONF_N") lines in $GEN_MS ms"

# ---- start-up ---------------------------------------------------------------------------
http_code() { # URL [HOST]
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 ${2:+-H "Host: $2"} "$1" 2>/dev/null || true
}
proc_status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# start_gateway CONFIG LAST_HOST COUNT: sets GW_PID, GW_ERR, T_READY_MS, T_ROUTED_MS, RSS_KIB, HWM_KIB
start_gateway() {
    local conf=$1 last=$2 label="$3 tenant(s)" t0 now deadline code
    GW_ERR=$OUT/tenantry-$3.stderr.log
    log "=== tenantry with $label ==="
    t0=$(now_ns)
    # A fresh store per start, under the output folder (not ./tenantry-data).
    start_bg /dev/null "$GW_ERR" "$TENANTRY_BIN" serve --config "$conf" --data-dir "$OUT/data-$3"
    GW_PID=$SPAWNED_PID
    deadline=$(($(date +%s) + START_TIMEOUT))
    T_READY_MS=
    T_ROUTED_MS=
    while :; do
        kill -0 "$GW_PID" 2>/dev/null || {
            tail -n 20 "$GW_ERR" >&2
            die "tenantry exited during start-up ($label)"
        }
        (($(date +%s) < deadline)) || die "tenantry not ready after ${START_TIMEOUT}s ($label)"
        if [[ -z $T_READY_MS ]]; then
            code=$(http_code "http://127.0.0.1:$ADMIN_PORT/readyz")
            if [[ $code == 200 ]]; then
                now=$(now_ns)
                T_READY_MS=$(calc "($now - $t0) / 1e6" %.0f)
            fi
        fi
        if [[ -n $T_READY_MS ]]; then
            code=$(http_code "http://127.0.0.1:$LISTEN_PORT/" "$last")
            if [[ $code == 200 ]]; then
                now=$(now_ns)
                T_ROUTED_MS=$(calc "($now - $t0) / 1e6" %.0f)
                break
            fi
        fi
        sleep 0.01
    done
    RSS_KIB=$(proc_status_kib "$GW_PID" VmRSS)
    HWM_KIB=$(proc_status_kib "$GW_PID" VmHWM)
    log "$label: /readyz 200 after $T_READY_MS ms, $last proxied after $T_ROUTED_MS ms; VmRSS $RSS_KIB KiB (peak VmHWM $HWM_KIB KiB)"
}

start_gateway "$CONF_1" "t1.$DOMAIN" 1
RSS1_KIB=$RSS_KIB
HWM1_KIB=$HWM_KIB
START1_MS=$T_ROUTED_MS
stop_pid "$GW_PID"

start_gateway "$CONF_N" "t$N.$DOMAIN" "$N"
RSSN_KIB=$RSS_KIB
HWMN_KIB=$HWM_KIB
READYN_MS=$T_READY_MS
STARTN_MS=$T_ROUTED_MS
PER_ROUTE=$(calc "($RSSN_KIB - $RSS1_KIB) * 1024 / ($N - 1)" %.0f)
PER_ROUTE_HWM=$(calc "($HWMN_KIB - $HWM1_KIB) * 1024 / ($N - 1)" %.0f)

# ---- lookups ----------------------------------------------------------------------------
# lookup_times HOST -> "last_status median_us min_us p90_us" of median/min time_total (us) of LOOKUP_REQS keep-alive requests, first dropped
lookup_times() {
    local host=$1 i
    local -a urls=()
    for ((i = 0; i <= LOOKUP_REQS; i++)); do urls+=(-o /dev/null "http://127.0.0.1:$LISTEN_PORT/"); done
    curl -s -w '%{http_code} %{time_total}\n' -H "Host: $host" "${urls[@]}" |
        awk -v h="$host" 'NR > 1 { c = $1; t[NR - 1] = $2 * 1e6 }
        END {
            n = NR - 1; for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (t[j] < t[i]) { x = t[i]; t[i] = t[j]; t[j] = x }
            med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
            printf "%s %.0f %.0f %.0f\n", c, med, t[1], t[int(n * 0.9 + 0.5)]
        }'
}
MID=$(((N + 1) / 2))
log "=== lookups: $LOOKUP_REQS keep-alive requests per host ==="
show_cmd curl -s -w '%{http_code} %{time_total}\n' -H "Host: HOST" -o /dev/null "http://127.0.0.1:$LISTEN_PORT/" :: "... (the '-o /dev/null URL' pair $((LOOKUP_REQS + 1)) times in one invocation, first timing dropped)"
declare -A LK
LOOKUP_HOSTS=("t1.$DOMAIN" "t$MID.$DOMAIN" "t$N.$DOMAIN" "nope.$DOMAIN")
for h in "${LOOKUP_HOSTS[@]}"; do
    LK[$h]=$(lookup_times "$h") || die "lookup requests with Host $h failed"
    read -r c med mn p90 <<<"${LK[$h]}"
    log "$h: status $c, median ${med} us, min ${mn} us, p90 ${p90} us"
done

declare -A WRK_RPS WRK_P99
if [[ -n $WRK ]]; then
    for h in "t1.$DOMAIN" "t$N.$DOMAIN"; do
        wrkout=$OUT/wrk-$h.txt
        show_cmd "$WRK" -t1 -c16 "-d$LOOKUP_DURATION" -H "Host: $h" --latency "http://127.0.0.1:$LISTEN_PORT/" :: ">$wrkout"
        "$WRK" -t1 -c16 "-d$LOOKUP_DURATION" -H "Host: $h" --latency "http://127.0.0.1:$LISTEN_PORT/" >"$wrkout" 2>&1 || die "wrk failed: $(cat "$wrkout")"
        WRK_RPS[$h]=$(awk '/^Requests\/sec:/ {print $2}' "$wrkout")
        WRK_P99[$h]=$(awk '/^ +99% / {print $2}' "$wrkout")
        if grep -q 'Non-2xx' "$wrkout"; then warn "wrk against $h saw non-2xx answers ($wrkout)"; fi
        log "wrk $h: ${WRK_RPS[$h]} req/s, p99 ${WRK_P99[$h]}"
    done
fi

# ---- reload -----------------------------------------------------------------------------
NEW=$((N + 1))
log "=== reload: append tenant t$NEW and POST /admin/reload ==="
tenant_block "$NEW" >>"$CONF_N"
echo "appended to $CONF_N:"
tenant_block "$NEW"
show_cmd curl -s -X POST -w '\n%{http_code} %{time_total}\n' "http://127.0.0.1:$ADMIN_PORT/admin/reload"
RELOAD_OUT=$(curl -s -X POST --max-time "$START_TIMEOUT" -w '\n%{http_code} %{time_total}\n' "http://127.0.0.1:$ADMIN_PORT/admin/reload") ||
    die "reload request failed"
RELOAD_JSON=$(printf '%s\n' "$RELOAD_OUT" | sed '$d')
read -r RELOAD_CODE RELOAD_S <<<"$(printf '%s\n' "$RELOAD_OUT" | tail -n 1)"
RELOAD_MS=$(calc "$RELOAD_S * 1000" %.1f)
echo "reload answer (HTTP $RELOAD_CODE): $RELOAD_JSON"
[[ $RELOAD_CODE == 200 ]] || warn "reload answered HTTP $RELOAD_CODE"
json_num() { printf '%s' "$RELOAD_JSON" | grep -o "\"$1\"[[:space:]]*:[[:space:]]*[0-9.eE+-]*" | head -n 1 | sed 's/.*:[[:space:]]*//'; }
BUILD_MS=$(json_num build_ms || true)
SWAP_MS=$(json_num swap_ms || true)
NEW_CODE=$(http_code "http://127.0.0.1:$LISTEN_PORT/" "t$NEW.$DOMAIN")
[[ $NEW_CODE == 200 ]] || warn "t$NEW.$DOMAIN answered $NEW_CODE after the reload (expected 200)"
grep -m 1 reloaded "$GW_ERR" 2>/dev/null | sed 's/^/stderr: /' || true
RSSR_KIB=$(proc_status_kib "$GW_PID" VmRSS)
HWMR_KIB=$(proc_status_kib "$GW_PID" VmHWM)

# ---- summary ----------------------------------------------------------------------------
row() { printf '%-44s %s\n' "$1" "$2"; }
echo
echo "== route-scale: $N tenants x 1 route, $TENANTRY_BIN, runtime.threads $THREADS =="
row "config" "$CONF_N ($(calc "$CONF_BYTES / 1048576" %.1f) MiB, generated in $GEN_MS ms)"
row "start-up, 1 tenant (last host proxied)" "$START1_MS ms"
row "start-up, $N tenants: /readyz 200" "$READYN_MS ms"
row "start-up, $N tenants: t$N proxied" "$STARTN_MS ms"
row "VmRSS 1 tenant / $N tenants" "$RSS1_KIB KiB / $RSSN_KIB KiB"
row "VmHWM 1 tenant / $N tenants (peak)" "$HWM1_KIB KiB / $HWMN_KIB KiB"
row "RSS per route (VmRSS delta / (N-1))" "$PER_ROUTE bytes (peak-based: $PER_ROUTE_HWM bytes)"
row "reload +1 tenant: build_ms / swap_ms" "${BUILD_MS:-?} / ${SWAP_MS:-?} (from the JSON answer)"
row "reload +1 tenant: curl time_total" "$RELOAD_MS ms (HTTP $RELOAD_CODE; t$NEW then answered $NEW_CODE)"
row "VmRSS / VmHWM after reload" "$RSSR_KIB KiB / $HWMR_KIB KiB"
for h in "${LOOKUP_HOSTS[@]}"; do
    read -r c med mn p90 <<<"${LK[$h]}"
    row "lookup $h" "HTTP $c, median $med us, min $mn us, p90 $p90 us (curl keep-alive)"
done
if [[ -n $WRK ]]; then
    for h in "t1.$DOMAIN" "t$N.$DOMAIN"; do
        row "wrk -t1 -c16 -d$LOOKUP_DURATION $h" "${WRK_RPS[$h]} req/s, p99 ${WRK_P99[$h]}"
    done
fi
echo "Start-up = spawn of 'tenantry serve' until the condition held (curl polling every ~10 ms)."
echo "Commands: see the '+' lines above. Configs, logs and raw wrk output: $OUT"
