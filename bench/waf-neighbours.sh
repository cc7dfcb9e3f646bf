#!/usr/bin/env bash
# Noisy neighbours under the WAF: what one tenant's WAF-heavy traffic does to other tenants'
# latency, on Tenantry and on nginx + libmodsecurity (Debian's libnginx-mod-http-modsecurity),
# same machine, same run.
#
#   bash bench/waf-neighbours.sh                    # 2 interleaved rounds, ~1 min
#   DURATION=5s RUNS=1 bash bench/waf-neighbours.sh # quick look
#
# Each proxy serves three tenants (hosts), pinned to PROXY_CPU (core 0) with one worker: nginx
# `worker_processes 1`; Tenantry `runtime.threads: 1` plus `waf.workers: 1` (its inspection
# thread shares the core). The backend nginx (`return 200 "ok\n"`) and every wrk run on
# LOAD_CPU (core 1).
#   heavy     WAF standard (CRS paranoia 1, threshold 5, blocking): saturated by
#             `wrk -t1 -c$CONNS` with browser-like GETs (clean: the CRS passes them)
#   quiet     WAF off: a paced probe, PROBE_CONNS connections each sending one request every
#             PROBE_DELAY_MS ms (wrk's delay()), so its latency is not its own queueing
#   guarded   WAF standard: the same paced probe
# nginx gets `modsecurity on` (Debian's modsecurity.conf-recommended as in bench/waf.sh,
# blocking, no audit log, same CRS tuning) in the heavy and guarded server blocks only.
#
# Per proxy and round: the probes alone for DURATION (baseline), then the probes while the heavy
# tenant is saturated for DURATION. The order of the proxies alternates each round. Reported
# (medians of RUNS): each probe's p50/p99 alone and under load, the heavy tenant's RPS, and
# nginx/Tenantry p99 ratios under load. A probe answered non-2xx, or a heavy run with more than
# 0.1% non-2xx, fails the script (exit 1).
#
# Knobs (environment):
#   DURATION=10s RUNS=2 CONNS=64 PROBE_CONNS=2 PROBE_DELAY_MS=20 WARMUP=2s
#   PROXY_CPU=0 LOAD_CPU=1 BACKEND_PORT=18001 PORT_BASE=28580 (tenantry +1, admin +11, nginx +21)
#   CRS_DIR=/usr/share/modsecurity-crs  CRS_SETUP=/etc/modsecurity/crs/crs-setup.conf
#   MODSEC_MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so  MODSEC_BASE=path
#   TENANTRY_BIN, NGINX_BIN, WRK_BIN, OUT_DIR (default: new /tmp/tenantry-wafn.XXXXXX, kept)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
RUNS=${RUNS:-2}
CONNS=${CONNS:-64}
PROBE_CONNS=${PROBE_CONNS:-2}
PROBE_DELAY_MS=${PROBE_DELAY_MS:-20}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT=${BACKEND_PORT:-18001}
PORT_BASE=${PORT_BASE:-28580}
CRS_DIR=${CRS_DIR:-/usr/share/modsecurity-crs}
CRS_SETUP=${CRS_SETUP:-/etc/modsecurity/crs/crs-setup.conf}
MODSEC_MODULE=${MODSEC_MODULE:-/usr/lib/nginx/modules/ngx_http_modsecurity_module.so}
MODSEC_BASE=${MODSEC_BASE:-}
GET_PATH='/api/items?page=2&sort=price'
HEADERS=(
    'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
    'Accept: application/json, text/plain, */*'
    'Accept-Language: en-US,en;q=0.5'
    'Accept-Encoding: gzip, deflate'
)

for v in RUNS CONNS PROBE_CONNS PROBE_DELAY_MS PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((RUNS > 0 && CONNS > 0 && PROBE_CONNS > 0)) || die "RUNS, CONNS and PROBE_CONNS must be positive"
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "$v must look like 10s, got '${!v}'"
done
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must differ"
NCPU=$(nproc)
for c in "$PROXY_CPU" "$LOAD_CPU"; do ((c < NCPU)) || die "core $c does not exist, this machine has $NCPU"; done
command -v taskset >/dev/null || die "taskset not found (apt-get install -y util-linux)"
command -v curl >/dev/null || die "curl not found"
NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install -y nginx) or set NGINX_BIN"
WRK=$(find_bin wrk "${WRK_BIN:-}") || die "wrk not found (apt-get install -y wrk) or set WRK_BIN"
[[ -f $MODSEC_MODULE ]] || die "no nginx ModSecurity module at $MODSEC_MODULE (apt-get install -y libnginx-mod-http-modsecurity)"
[[ -d $CRS_DIR/rules ]] || die "no CRS rules under $CRS_DIR/rules (apt-get install -y modsecurity-crs)"
[[ -f $CRS_SETUP ]] || die "no $CRS_SETUP (apt-get install -y modsecurity-crs)"
if [[ -z $MODSEC_BASE ]]; then
    for MODSEC_BASE in /usr/share/nginx/docs/modsecurity/modsecurity.conf /etc/nginx/modsecurity.conf; do
        [[ -f $MODSEC_BASE ]] && break
    done
fi
[[ -f $MODSEC_BASE ]] || die "no base ModSecurity config (MODSEC_BASE=$MODSEC_BASE)"
ensure_tenantry

T_PORT=$((PORT_BASE + 1)) T_ADMIN=$((PORT_BASE + 11)) N_PORT=$((PORT_BASE + 21))
require_free_port "$BACKEND_PORT" "$T_PORT" "$T_ADMIN" "$N_PORT"
OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-wafn.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT"
trap cleanup_bg EXIT
trap 'exit 130' INT TERM
T_START=$(date +%s)
log "waf-neighbours: output in $OUT"
log "knobs: DURATION=$DURATION RUNS=$RUNS CONNS=$CONNS PROBE_CONNS=$PROBE_CONNS PROBE_DELAY_MS=$PROBE_DELAY_MS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
NOISY=0
preflight "$LOAD_CPU" "$PROXY_CPU"

# ---- configs --------------------------------------------------------------------------------
mkdir -p "$OUT/backend" "$OUT/nginx/tmp" "$OUT/tenantry"
chmod 1777 "$OUT/nginx/tmp"
cat >"$OUT/backend/nginx.conf" <<EOF
$(nginx_main_conf "$OUT/backend" 1)
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$OUT/backend" "$NGINX")
    server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { return 200 "ok\n"; } }
}
EOF

sed -e 's/^SecRuleEngine .*/SecRuleEngine On/' \
    -e 's/^SecAuditEngine .*/SecAuditEngine Off/' \
    -e 's/^SecStatusEngine .*/SecStatusEngine Off/' \
    -e 's/^SecResponseBodyAccess .*/SecResponseBodyAccess Off/' \
    -e "s|^SecTmpDir .*|SecTmpDir $OUT/nginx/tmp/|" \
    -e "s|^SecDataDir .*|SecDataDir $OUT/nginx/tmp/|" \
    -e "s|^SecAuditLog .*|SecAuditLog $OUT/nginx/audit.log|" \
    -e "s|^SecUnicodeMapFile .*|SecUnicodeMapFile $(dirname "$MODSEC_BASE")/unicode.mapping 20127|" \
    "$MODSEC_BASE" >"$OUT/nginx/modsecurity.conf"
cat >"$OUT/nginx/rules.conf" <<EOF
# standard: paranoia 1, inbound threshold 5 (as Tenantry's level)
Include $OUT/nginx/modsecurity.conf
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=1"
SecAction "id:900001,phase:1,nolog,pass,t:none,setvar:tx.executing_paranoia_level=1"
SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold=5,setvar:tx.outbound_anomaly_score_threshold=4"
Include $CRS_SETUP
Include $CRS_DIR/rules/*.conf
EOF
nginx_server() { # HOST MODSEC(0|1)
    local modsec=""
    (($2)) && modsec="modsecurity on; modsecurity_rules_file $OUT/nginx/rules.conf;"
    cat <<EOF
    server {
        listen 127.0.0.1:$N_PORT;
        server_name $1;
        $modsec
        location / { proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
EOF
}
cat >"$OUT/nginx/nginx.conf" <<EOF
load_module $MODSEC_MODULE;
$(nginx_main_conf "$OUT/nginx" 1)
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$OUT/nginx" "$NGINX")
    upstream bench { server 127.0.0.1:$BACKEND_PORT; keepalive 128; keepalive_requests 100000; keepalive_timeout 300s; }
    server { listen 127.0.0.1:$N_PORT default_server backlog=4096; return 404; }
$(nginx_server heavy.localhost 1)
$(nginx_server quiet.localhost 0)
$(nginx_server guarded.localhost 1)
}
EOF

tenant_yaml() { # ID LEVEL
    cat <<EOF
  - id: $1
    waf: { level: $2, mode: block }
    routes:
      - id: web
        host: $1.localhost
        path_prefix: /
        backends: [ { address: 127.0.0.1:$BACKEND_PORT } ]
EOF
}
cat >"$OUT/tenantry/tenantry.yaml" <<EOF
# one runtime thread + one WAF inspection thread on core $PROXY_CPU, no access log
listen: 127.0.0.1:$T_PORT
admin: { listen: 127.0.0.1:$T_ADMIN }
access_log: false
runtime: { threads: 1 }
shutdown: { drain: 0ms, grace: 2s }
upgrade_socket: $OUT/tenantry/upgrade.sock
waf:
  crs: $CRS_DIR
  workers: 1
  levels:
    standard: { paranoia: 1, executing_paranoia: 1, threshold: 5 }
# no plan key: the tenants are moved to the "unlimited" plan through the admin API
tenants:
$(tenant_yaml heavy standard)
$(tenant_yaml quiet "\"off\"")
$(tenant_yaml guarded standard)
EOF

cat >"$OUT/probe.lua" <<EOF
-- one request every $PROBE_DELAY_MS ms per connection
function delay() return $PROBE_DELAY_MS end
EOF

# ---- start ----------------------------------------------------------------------------------
nginx_cmd "$NGINX" "$OUT/backend" "$OUT/backend/nginx.conf"
start_bg /dev/null "$OUT/backend/stderr.log" taskset -c "$LOAD_CPU" "${NGINX_CMD[@]}"
wait_http "http://127.0.0.1:$BACKEND_PORT/" x "$SPAWNED_PID" "$OUT/backend/stderr.log" 30 || die "backend did not come up"

nginx_cmd "$NGINX" "$OUT/nginx" "$OUT/nginx/nginx.conf"
"${NGINX_CMD[@]}" -t -q >"$OUT/nginx/configtest.log" 2>&1 || {
    cat "$OUT/nginx/configtest.log" >&2
    die "nginx rejected $OUT/nginx/nginx.conf"
}
start_bg /dev/null "$OUT/nginx/stderr.log" taskset -c "$PROXY_CPU" "${NGINX_CMD[@]}"
wait_http "http://127.0.0.1:$N_PORT/" x "$SPAWNED_PID" "$OUT/nginx/stderr.log" 60 || die "nginx did not come up"

start_bg /dev/null "$OUT/tenantry/stderr.log" env -u TENANTRY_REDIS -u TENANTRY_STORE -u TENANTRY_DATA_DIR \
    "TENANTRY_ADMIN_EMAIL=$ADMIN_EMAIL" "TENANTRY_ADMIN_PASSWORD=$ADMIN_PASSWORD" \
    taskset -c "$PROXY_CPU" "$TENANTRY_BIN" serve --config "$OUT/tenantry/tenantry.yaml" --data-dir "$OUT/tenantry/data"
wait_http "http://127.0.0.1:$T_ADMIN/readyz" x "$SPAWNED_PID" "$OUT/tenantry/stderr.log" 120 || die "tenantry did not come up"
set_unlimited "$T_ADMIN" heavy quiet guarded
declare -A PORT=([tenantry]=$T_PORT [nginx]=$N_PORT)

# ---- checks ---------------------------------------------------------------------------------
code_of() { # PROXY HOST PATH
    local -a args=(-s -o /dev/null -w '%{http_code}' --max-time 10 -H "Host: $2")
    local h
    for h in "${HEADERS[@]}"; do args+=(-H "$h"); done
    curl "${args[@]}" "http://127.0.0.1:${PORT[$1]}$3" 2>/dev/null || echo 000
}
XSS_PATH='/api/items?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E'
for p in tenantry nginx; do
    line="$p:"
    for t in heavy quiet guarded; do
        want=403
        [[ $t == quiet ]] && want=200
        g=$(code_of "$p" "$t.localhost" "$GET_PATH")
        x=$(code_of "$p" "$t.localhost" "$XSS_PATH")
        line+=" $t clean $g xss $x;"
        [[ $g == 200 ]] || die "$p $t: the clean GET answered $g"
        [[ $x == "$want" ]] || die "$p $t: the XSS GET answered $x, not $want"
    done
    log "check $line"
done

wrk_cmd() { # PROXY HOST CONNS DURATION [probe]
    local h
    WRK_CMD=(taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$3" "-d$4" --latency -H "Host: $2")
    for h in "${HEADERS[@]}"; do WRK_CMD+=(-H "$h"); done
    [[ ${5:-} == probe ]] && WRK_CMD+=(-s "$OUT/probe.lua")
    WRK_CMD+=("http://127.0.0.1:${PORT[$1]}$GET_PATH")
}
log "=== warm-up ($WARMUP per proxy) ==="
for p in tenantry nginx; do
    wrk_cmd "$p" heavy.localhost "$CONNS" "$WARMUP"
    "${WRK_CMD[@]}" >/dev/null 2>&1 || die "warm-up against $p failed"
done

# ---- measure --------------------------------------------------------------------------------
declare -A P50 P99 RPS
FAILED=()
record() { # KEY FILE [heavy]
    local res rps p50 p99 reqs non serr
    res=$(parse_wrk "$2") || die "could not parse $2: $(cat "$2")"
    read -r rps p50 p99 reqs non serr <<<"$res"
    P50[$1]+=" $p50" P99[$1]+=" $p99" RPS[$1]+=" $rps"
    log "  $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, $reqs requests, non-2xx $non, socket errors $serr"
    if [[ ${3:-} == heavy ]]; then
        [[ $(calc "($non + $serr) * 1000 > $reqs" %d) == 0 ]] || FAILED+=("$1: $non non-2xx + $serr socket errors of $reqs")
    else
        ((non + serr == 0)) || FAILED+=("$1: $non non-2xx + $serr socket errors of $reqs")
    fi
}
round() { # PROXY RUN
    local p=$1 r=$2 f=$OUT/$1-$2 pq pg ph
    log "=== $p, round $r: probes alone ==="
    wrk_cmd "$p" quiet.localhost "$PROBE_CONNS" "$DURATION" probe
    "${WRK_CMD[@]}" >"$f-quiet-alone.txt" 2>&1 &
    pq=$!
    wrk_cmd "$p" guarded.localhost "$PROBE_CONNS" "$DURATION" probe
    "${WRK_CMD[@]}" >"$f-guarded-alone.txt" 2>&1 &
    pg=$!
    wait "$pq" "$pg" || die "a probe failed against $p"
    record "$p|quiet|alone" "$f-quiet-alone.txt"
    record "$p|guarded|alone" "$f-guarded-alone.txt"
    log "=== $p, round $r: probes while heavy is saturated (-c$CONNS) ==="
    wrk_cmd "$p" heavy.localhost "$CONNS" "$DURATION"
    show_cmd "${WRK_CMD[@]}"
    "${WRK_CMD[@]}" >"$f-heavy.txt" 2>&1 &
    ph=$!
    sleep 0.5 # the backlog builds up first
    wrk_cmd "$p" quiet.localhost "$PROBE_CONNS" "$DURATION" probe
    show_cmd "${WRK_CMD[@]}"
    "${WRK_CMD[@]}" >"$f-quiet-load.txt" 2>&1 &
    pq=$!
    wrk_cmd "$p" guarded.localhost "$PROBE_CONNS" "$DURATION" probe
    "${WRK_CMD[@]}" >"$f-guarded-load.txt" 2>&1 &
    pg=$!
    wait "$pq" "$pg" "$ph" || die "a wrk run failed against $p"
    record "$p|quiet|load" "$f-quiet-load.txt"
    record "$p|guarded|load" "$f-guarded-load.txt"
    record "$p|heavy|load" "$f-heavy.txt" heavy
}
for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then order=(tenantry nginx); else order=(nginx tenantry); fi
    for p in "${order[@]}"; do round "$p" "$r"; done
done
curl -s --max-time 5 "http://127.0.0.1:$T_ADMIN/metrics" >"$OUT/tenantry/metrics.txt" || true
DECISIONS=$(awk '/^tenantry_waf_decisions_total\{/ {
        t = $0; sub(/.*tenant="/, "", t); sub(/".*/, "", t)
        a = $0; sub(/.*action="/, "", a); sub(/".*/, "", a); d[t "/" a] += $NF }
    END { for (k in d) printf "%s=%d ", k, d[k] }' "$OUT/tenantry/metrics.txt")

# ---- report ---------------------------------------------------------------------------------
m() { # ARRAY KEY
    local -n arr=$1
    # shellcheck disable=SC2086 # a word list
    median ${arr[$2]}
}
echo
echo "== waf-neighbours: medians of $RUNS round(s); each proxy one worker on core $PROXY_CPU (tenantry + one WAF thread);"
echo "   heavy (WAF standard): wrk -t1 -c$CONNS -d$DURATION; probes: wrk -t1 -c$PROBE_CONNS, one request per $PROBE_DELAY_MS ms per connection =="
fmt='%-9s %-9s %9s %9s | %9s %9s\n'
# shellcheck disable=SC2059
printf "$fmt" tenant proxy "alone p50" "alone p99" "load p50" "load p99"
for t in quiet guarded; do
    for p in tenantry nginx; do
        # shellcheck disable=SC2059
        printf "$fmt" "$t" "$p" "$(calc "$(m P50 "$p|$t|alone")" %.2f)" "$(calc "$(m P99 "$p|$t|alone")" %.2f)" \
            "$(calc "$(m P50 "$p|$t|load")" %.2f)" "$(calc "$(m P99 "$p|$t|load")" %.2f)"
    done
done
echo "(milliseconds)"
th=$(m RPS "tenantry|heavy|load") nh=$(m RPS "nginx|heavy|load")
echo "heavy tenant while probed: tenantry $(calc "$th" %.0f) req/s, nginx + ModSecurity $(calc "$nh" %.0f) req/s ($(calc "$th / $nh" %.2f)x)"
for t in quiet guarded; do
    echo "$t under load, p99 nginx / tenantry: $(calc "$(m P99 "nginx|$t|load") / $(m P99 "tenantry|$t|load")" %.1f)x"
done
echo "tenantry WAF decisions (checks and warm-up included): $DECISIONS"
echo "raw wrk output, configs and logs: $OUT; total time $(($(date +%s) - T_START)) s"
((NOISY == 0)) || echo "WARNING: other load was seen on the benchmark cores; figures are noisy."
if ((${#FAILED[@]})); then
    echo "CHECKS FAILED:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "checks: no probe request answered non-2xx; heavy runs at most 0.1% non-2xx"
