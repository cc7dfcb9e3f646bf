#!/usr/bin/env bash
# What the WAF costs: Tenantry's WAF'd route at each level vs the same route with the WAF off,
# and vs nginx + libmodsecurity (Debian's libnginx-mod-http-modsecurity) with the same CRS
# level, same machine, same run.
#
#   bash bench/waf.sh                                   # all levels, GET + POST, ~6 min
#   LEVELS="off standard" DURATION=5s bash bench/waf.sh # quick look
#
# Layout (2 cores needed): every proxy under test is pinned to PROXY_CPUS (core 0) with
# WORKERS (1) workers: nginx `worker_processes WORKERS`; Tenantry `runtime.threads: WORKERS`
# and `waf.workers: WORKERS` (its inspection threads; they share the same pinned core, so both
# proxies get the same CPU). One backend nginx (one worker, 127.0.0.1:BACKEND_PORT answering
# `return 200 "ok\n"`, keep-alive) and wrk (-t1) share core LOAD_CPU (1). Both proxies keep
# upstream connections alive, and neither writes an access log.
#
# Per level in LEVELS (off basic standard strict), two proxies run side by side (all of them
# are started first; the idle ones cost nothing) and the measured runs are interleaved, the
# order of the two proxies alternating every round, because the VM drifts by ±10% over minutes:
#   tenantry  one tenant (moved to an "unlimited" plan through the admin API, as in
#             proxy-vs-nginx.sh, so no rate limit interferes) with `waf: {level: L, mode: block}`
#             and the level tuning written out in `waf.levels`
#   nginx     `modsecurity on` with Debian's modsecurity.conf-recommended (as tests/crs/run.sh
#             uses it) but SecRuleEngine On (blocking), no audit log, no status engine, and
#             SecResponseBodyAccess Off (Tenantry inspects requests only); then the same CRS
#             tuning (SecAction 900000/900001/900110), Debian's crs-setup.conf and the CRS rules
#             of CRS_DIR. For L=off: no ModSecurity module at all.
#   Levels (the same numbers on both sides; Tenantry's defaults):
#     basic    paranoia 1, inbound anomaly threshold 10
#     standard paranoia 1, threshold 5
#     strict   paranoia 2 (blocking), executing paranoia 3, threshold 5
# Requests (REQUESTS: get post), browser-like so the CRS does not flag them:
#   get   GET /api/items?page=2&sort=price, Host bench.localhost, User-Agent (Firefox),
#         Accept, Accept-Language, Accept-Encoding
#   post  the same headers, POST /api/items with a 95-byte JSON body (Content-Type
#         application/json, so both parse it with the JSON body processor)
# Checks before measuring (printed): the clean GET and POST answer 200 from both proxies; an
# XSS GET (?q=<script>alert(1)</script>) answers 403 from both when the WAF is on, 200 when
# off. After each run non-2xx responses + socket errors must stay <= 0.1% of the requests,
# else the script prints the table and exits 1. Tenantry's tenantry_waf_decisions_total
# (pass/block/busy/unavailable) is scraped at the end and printed.
#
# Table (medians of RUNS runs): RPS, p99, proxy CPU µs per request, for both; Tenantry/nginx
# RPS and p99 ratios; each proxy's RPS relative to its own WAF-off RPS (same request type);
# and whether Tenantry reaches TARGET (2.0) x nginx+ModSecurity's RPS at that level.
#
# Knobs (environment):
#   LEVELS="off basic standard strict"   REQUESTS="get post"
#   DURATION=10s RUNS=2 CONNS=64 WARMUP=2s    wrk settings (one warm-up per proxy and request)
#   WORKERS=1 PROXY_CPUS=0 LOAD_CPU=1         proxy workers, their cores (taskset list), load core
#   BACKEND_PORT=18001 PORT_BASE=28480        tenantry on PORT_BASE+1..4 (admin +11..14),
#                                             nginx on PORT_BASE+21..24
#   CRS_DIR=/usr/share/modsecurity-crs  CRS_SETUP=/etc/modsecurity/crs/crs-setup.conf
#   MODSEC_MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
#   MODSEC_BASE=path    the base ModSecurity config (default: Debian's recommended one)
#   WAF_INSTALL=0       do not apt-get install missing packages (needs root otherwise)
#   TENANTRY_BIN, NGINX_BIN, WRK_BIN, OUT_DIR (default: new /tmp/tenantry-waf.XXXXXX, kept)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LEVELS=${LEVELS:-off basic standard strict}
REQUESTS=${REQUESTS:-get post}
DURATION=${DURATION:-10s}
RUNS=${RUNS:-2}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
WORKERS=${WORKERS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT=${BACKEND_PORT:-18001}
PORT_BASE=${PORT_BASE:-28480}
CRS_DIR=${CRS_DIR:-/usr/share/modsecurity-crs}
CRS_SETUP=${CRS_SETUP:-/etc/modsecurity/crs/crs-setup.conf}
MODSEC_MODULE=${MODSEC_MODULE:-/usr/lib/nginx/modules/ngx_http_modsecurity_module.so}
MODSEC_BASE=${MODSEC_BASE:-}
WAF_INSTALL=${WAF_INSTALL:-1}
TARGET=2.0
NON2XX_MAX_PCT=0.1
HOST_HEADER=bench.localhost
GET_PATH='/api/items?page=2&sort=price'
POST_PATH=/api/items
POST_BODY='{"name":"blue widget","price":12.5,"tags":["blue","small"],"stock":{"warehouse":"north","count":3}}'
XSS_PATH='/api/items?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E'
HEADERS=(
    "Host: $HOST_HEADER"
    'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
    'Accept: application/json, text/plain, */*'
    'Accept-Language: en-US,en;q=0.5'
    'Accept-Encoding: gzip, deflate'
)

# level tuning, shared by both proxies
declare -A PL=([basic]=1 [standard]=1 [strict]=2)
declare -A EPL=([basic]=1 [standard]=1 [strict]=3)
declare -A THR=([basic]=10 [standard]=5 [strict]=5)
declare -A LIDX=([off]=1 [basic]=2 [standard]=3 [strict]=4)

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer, got '$CONNS'"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, got '$WORKERS'"
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "$v must look like 10s, got '${!v}'"
done
[[ $PROXY_CPUS =~ ^[0-9]+([,-][0-9]+)*$ ]] || die "PROXY_CPUS must be a taskset cpu list (0 or 0,1), got '$PROXY_CPUS'"
read -r -a LEVEL_LIST <<<"$LEVELS"
read -r -a REQ_LIST <<<"$REQUESTS"
((${#LEVEL_LIST[@]})) || die "LEVELS is empty"
((${#REQ_LIST[@]})) || die "REQUESTS is empty"
for l in "${LEVEL_LIST[@]}"; do [[ -n ${LIDX[$l]:-} ]] || die "unknown level '$l' in LEVELS (off basic standard strict)"; done
for q in "${REQ_LIST[@]}"; do [[ $q =~ ^(get|post)$ ]] || die "unknown request '$q' in REQUESTS (get post)"; done
has_level() { [[ " $LEVELS " == *" $1 "* ]]; }
NEED_MODSEC=0
for l in "${LEVEL_LIST[@]}"; do [[ $l != off ]] && NEED_MODSEC=1; done

# cpus_of LIST: the cpu numbers of a taskset list ("0", "0,1", "0-1")
cpus_of() {
    local part a b
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            a=${part%-*} b=${part#*-}
            seq "$a" "$b"
        else
            echo "$part"
        fi
    done
}
mapfile -t PCPUS < <(cpus_of "$PROXY_CPUS")

# ---- tools and packages ---------------------------------------------------------------------
NCPU=$(nproc)
for c in "${PCPUS[@]}" "$LOAD_CPU"; do ((c < NCPU)) || die "core $c does not exist, this machine has $NCPU"; done
for c in "${PCPUS[@]}"; do ((c != LOAD_CPU)) || warn "PROXY_CPUS includes LOAD_CPU: proxy and load generator share a core"; done
command -v taskset >/dev/null || die "taskset not found (apt-get install -y util-linux)"
command -v curl >/dev/null || die "curl not found"

missing=()
find_bin nginx "${NGINX_BIN:-}" >/dev/null || missing+=(nginx)
find_bin wrk "${WRK_BIN:-}" >/dev/null || missing+=(wrk)
if ((NEED_MODSEC)); then
    for p in libnginx-mod-http-modsecurity libmodsecurity3 modsecurity-crs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
fi
if ((${#missing[@]})); then
    if [[ $WAF_INSTALL == 1 && $(id -u) == 0 ]]; then
        log "installing ${missing[*]}"
        show_cmd apt-get install -y "${missing[@]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing packages: ${missing[*]} (apt-get install -y ${missing[*]})"
    fi
fi
NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install -y nginx) or set NGINX_BIN"
WRK=$(find_bin wrk "${WRK_BIN:-}") || die "wrk not found (apt-get install -y wrk) or set WRK_BIN"
if ((NEED_MODSEC)); then
    [[ -f $MODSEC_MODULE ]] || die "no nginx ModSecurity module at $MODSEC_MODULE (apt-get install -y libnginx-mod-http-modsecurity)"
    [[ -d $CRS_DIR/rules ]] || die "no CRS rules under $CRS_DIR/rules (apt-get install -y modsecurity-crs)"
    [[ -f $CRS_SETUP ]] || die "no $CRS_SETUP (apt-get install -y modsecurity-crs)"
    if [[ -z $MODSEC_BASE ]]; then
        for MODSEC_BASE in /usr/share/nginx/docs/modsecurity/modsecurity.conf /etc/nginx/modsecurity.conf; do
            [[ -f $MODSEC_BASE ]] && break
        done
    fi
    [[ -f $MODSEC_BASE ]] || die "no base ModSecurity config (MODSEC_BASE=$MODSEC_BASE)"
fi
ensure_tenantry

ports=("$BACKEND_PORT")
for l in "${LEVEL_LIST[@]}"; do
    i=${LIDX[$l]}
    ports+=($((PORT_BASE + i)) $((PORT_BASE + 10 + i)) $((PORT_BASE + 20 + i)))
done
require_free_port "${ports[@]}"

OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-waf.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT" # nginx workers run as nobody when started by root

trap cleanup_bg EXIT
trap 'exit 130' INT TERM
T_START=$(date +%s)

log "waf: output in $OUT"
log "host: $(uname -sr), $NCPU cpus ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
log "nginx: $NGINX ($("$NGINX" -v 2>&1 | sed 's/^nginx version: //')); wrk: $WRK ($("$WRK" -v 2>&1 | awk 'NR == 1 {print $2}'))"
if ((NEED_MODSEC)); then
    log "libmodsecurity3 $(dpkg-query -W -f='${Version}' libmodsecurity3 2>/dev/null || echo '?'), libnginx-mod-http-modsecurity $(dpkg-query -W -f='${Version}' libnginx-mod-http-modsecurity 2>/dev/null || echo '?'), modsecurity-crs $(dpkg-query -W -f='${Version}' modsecurity-crs 2>/dev/null || echo '?') ($CRS_DIR)"
fi
log "knobs: LEVELS='$LEVELS' REQUESTS='$REQUESTS' DURATION=$DURATION RUNS=$RUNS CONNS=$CONNS WARMUP=$WARMUP WORKERS=$WORKERS PROXY_CPUS=$PROXY_CPUS LOAD_CPU=$LOAD_CPU"

# ---- helpers --------------------------------------------------------------------------------

# (api and set_unlimited are in lib.sh)

# ---- configs --------------------------------------------------------------------------------
write_backend_conf() {
    local dir=$OUT/backend
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# backend: one nginx worker answering 200 "ok\n" to anything (GET or POST)
$(nginx_main_conf "$dir" 1)
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$dir" "$NGINX")
    server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
}

# Debian's modsecurity.conf-recommended, blocking, without audit log or status engine, with
# writable paths and response bodies not inspected (Tenantry inspects requests only)
modsec_base() { # DIR
    local dir=$1
    sed -e 's/^SecRuleEngine .*/SecRuleEngine On/' \
        -e 's/^SecAuditEngine .*/SecAuditEngine Off/' \
        -e 's/^SecStatusEngine .*/SecStatusEngine Off/' \
        -e 's/^SecResponseBodyAccess .*/SecResponseBodyAccess Off/' \
        -e "s|^SecTmpDir .*|SecTmpDir $dir/tmp/|" \
        -e "s|^SecDataDir .*|SecDataDir $dir/tmp/|" \
        -e "s|^SecAuditLog .*|SecAuditLog $dir/audit.log|" \
        -e "s|^SecUnicodeMapFile .*|SecUnicodeMapFile $(dirname "$MODSEC_BASE")/unicode.mapping 20127|" \
        "$MODSEC_BASE"
}

write_nginx_conf() { # LEVEL
    local level=$1 port=$((PORT_BASE + 20 + LIDX[$1])) dir=$OUT/nginx-$1 load="" modsec=""
    mkdir -p "$dir/tmp"
    chmod 1777 "$dir/tmp"
    if [[ $level != off ]]; then
        modsec_base "$dir" >"$dir/modsecurity.conf"
        cat >"$dir/rules.conf" <<EOF
# $level: paranoia ${PL[$level]}, executing paranoia ${EPL[$level]}, inbound threshold ${THR[$level]} (as Tenantry's level)
Include $dir/modsecurity.conf
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=${PL[$level]}"
SecAction "id:900001,phase:1,nolog,pass,t:none,setvar:tx.executing_paranoia_level=${EPL[$level]}"
SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold=${THR[$level]},setvar:tx.outbound_anomaly_score_threshold=4"
Include $CRS_SETUP
Include $CRS_DIR/rules/*.conf
EOF
        load="load_module $MODSEC_MODULE;"
        modsec="        modsecurity on;
        modsecurity_rules_file $dir/rules.conf;"
    fi
    cat >"$dir/nginx.conf" <<EOF
# nginx, WAF $level: $WORKERS worker(s), keep-alive upstream, no access log
$load
$(nginx_main_conf "$dir" "$WORKERS")
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$dir" "$NGINX")
    upstream bench {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
        keepalive_requests 100000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port default_server backlog=4096;
        return 404;
    }
    server {
        listen 127.0.0.1:$port;
        server_name $HOST_HEADER;
$modsec
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_tenantry_conf() { # LEVEL
    local level=$1 port=$((PORT_BASE + LIDX[$1])) dir=$OUT/tenantry-$1
    mkdir -p "$dir"
    cat >"$dir/tenantry.yaml" <<EOF
# tenantry, WAF $level: $WORKERS runtime thread(s) + $WORKERS WAF inspection thread(s), no access log
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$((port + 10)) }
access_log: false
runtime: { threads: $WORKERS }
metrics: { max_tenants: 1000 }
shutdown: { drain: 0ms, grace: 2s }
upgrade_socket: $dir/upgrade.sock
waf:
  crs: $CRS_DIR
  workers: $WORKERS
  levels:
    basic: { paranoia: ${PL[basic]}, executing_paranoia: ${EPL[basic]}, threshold: ${THR[basic]} }
    standard: { paranoia: ${PL[standard]}, executing_paranoia: ${EPL[standard]}, threshold: ${THR[standard]} }
    strict: { paranoia: ${PL[strict]}, executing_paranoia: ${EPL[strict]}, threshold: ${THR[strict]} }
# no plan key: the tenant is moved to the "unlimited" plan through the admin API
tenants:
  - id: bench
    waf: { level: $level, mode: block }
    routes:
      - id: web
        host: $HOST_HEADER
        path_prefix: /
        backends:
          - { address: 127.0.0.1:$BACKEND_PORT }
EOF
}

cat >"$OUT/post.lua" <<EOF
-- POST $POST_PATH with a small JSON body (the -H headers are added by wrk)
wrk.method = "POST"
wrk.path = "$POST_PATH"
wrk.body = '$POST_BODY'
wrk.headers["Content-Type"] = "application/json"
EOF

# ---- start ----------------------------------------------------------------------------------
declare -A PID PORT
start_nginx() { # LEVEL
    local level=$1 name=nginx-$1 dir=$OUT/nginx-$1
    PORT[$name]=$((PORT_BASE + 20 + LIDX[$level]))
    write_nginx_conf "$level"
    nginx_cmd "$NGINX" "$dir" "$dir/nginx.conf"
    "${NGINX_CMD[@]}" -t -q >"$dir/configtest.log" 2>&1 || {
        cat "$dir/configtest.log" >&2
        die "nginx rejected $dir/nginx.conf"
    }
    start_bg /dev/null "$dir/stderr.log" taskset -c "$PROXY_CPUS" "${NGINX_CMD[@]}"
    PID[$name]=$SPAWNED_PID
    wait_http "http://127.0.0.1:${PORT[$name]}/" "$HOST_HEADER" "${PID[$name]}" "$dir/stderr.log" 60 || die "$name did not come up"
}

start_tenantry() { # LEVEL
    local level=$1 name=tenantry-$1 dir=$OUT/tenantry-$1
    PORT[$name]=$((PORT_BASE + LIDX[$level]))
    write_tenantry_conf "$level"
    rm -rf "$dir/data"
    start_bg /dev/null "$dir/stderr.log" env -u TENANTRY_REDIS -u TENANTRY_STORE -u TENANTRY_DATA_DIR \
        "TENANTRY_ADMIN_EMAIL=$ADMIN_EMAIL" "TENANTRY_ADMIN_PASSWORD=$ADMIN_PASSWORD" \
        taskset -c "$PROXY_CPUS" "$TENANTRY_BIN" serve --config "$dir/tenantry.yaml" --data-dir "$dir/data"
    PID[$name]=$SPAWNED_PID
    wait_http "http://127.0.0.1:$((PORT[$name] + 10))/readyz" x "${PID[$name]}" "$dir/stderr.log" 120 || die "$name did not come up"
    set_unlimited $((PORT[$name] + 10)) bench
}

# code_of NAME METHOD PATH [BODY]: the HTTP status of one request with the benchmark headers
code_of() {
    local name=$1 method=$2 path=$3 body=${4:-}
    local -a args=(-s -o /dev/null -w '%{http_code}' --max-time 10 -X "$method")
    local h
    for h in "${HEADERS[@]}"; do args+=(-H "$h"); done
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    curl "${args[@]}" "http://127.0.0.1:${PORT[$name]}$path" 2>/dev/null || echo 000
}

CHECK_LINES=()
sanity() { # NAME LEVEL
    local name=$1 level=$2 g p x want_x=403 hdr
    [[ $level == off ]] && want_x=200
    g=$(code_of "$name" GET "$GET_PATH")
    p=$(code_of "$name" POST "$POST_PATH" "$POST_BODY")
    x=$(code_of "$name" GET "$XSS_PATH")
    CHECK_LINES+=("$(printf '%-18s clean GET %s, clean POST %s, XSS GET %s (want 200/200/%s)' "$name" "$g" "$p" "$x" "$want_x")")
    log "$name: clean GET $g, clean POST $p, XSS GET $x (want 200, 200, $want_x)"
    [[ $g == 200 ]] || die "$name: the clean GET answered $g, not 200 (see $OUT/${name}/); the CRS flags it?"
    [[ $p == 200 ]] || die "$name: the clean POST answered $p, not 200 (see $OUT/${name}/); the CRS flags it?"
    [[ $x == "$want_x" ]] || die "$name: the XSS GET answered $x, not $want_x: the WAF is $([[ $level == off ]] && echo on || echo off)?"
    if [[ $name == tenantry-* ]]; then
        hdr=$(curl -s -D - -o /dev/null --max-time 5 -H "Host: $HOST_HEADER" "http://127.0.0.1:${PORT[$name]}/" | tr -d '\r') || true
        ! grep -qi '^ratelimit-' <<<"$hdr" || die "$name: rate limiting is on ($(grep -i '^ratelimit-' <<<"$hdr" | tr '\n' ' '))"
    fi
}

wrk_cmd() { # NAME REQ DURATION -> WRK_CMD
    local name=$1 req=$2 dur=$3 h
    WRK_CMD=(taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$CONNS" "-d$dur" --latency)
    for h in "${HEADERS[@]}"; do WRK_CMD+=(-H "$h"); done
    if [[ $req == post ]]; then
        WRK_CMD+=(-s "$OUT/post.lua" "http://127.0.0.1:${PORT[$name]}$POST_PATH")
    else
        WRK_CMD+=("http://127.0.0.1:${PORT[$name]}$GET_PATH")
    fi
}

# preflight: the cores should be idle
NOISY=0
preflight "$LOAD_CPU" "${PCPUS[@]}"

write_backend_conf
nginx_cmd "$NGINX" "$OUT/backend" "$OUT/backend/nginx.conf"
"${NGINX_CMD[@]}" -t -q >"$OUT/backend/configtest.log" 2>&1 || {
    cat "$OUT/backend/configtest.log" >&2
    die "nginx rejected the backend config"
}
log "=== backend (nginx, core $LOAD_CPU, 127.0.0.1:$BACKEND_PORT) ==="
start_bg /dev/null "$OUT/backend/stderr.log" taskset -c "$LOAD_CPU" "${NGINX_CMD[@]}"
wait_http "http://127.0.0.1:$BACKEND_PORT/" x "$SPAWNED_PID" "$OUT/backend/stderr.log" 30 || die "backend did not come up"

SYSTEMS=()
for l in "${LEVEL_LIST[@]}"; do
    log "=== level $l: tenantry on 127.0.0.1:$((PORT_BASE + LIDX[$l])), nginx on 127.0.0.1:$((PORT_BASE + 20 + LIDX[$l])) ==="
    start_tenantry "$l"
    start_nginx "$l"
    SYSTEMS+=("tenantry-$l" "nginx-$l")
done

log "=== checks (before measuring) ==="
for l in "${LEVEL_LIST[@]}"; do
    sanity "tenantry-$l" "$l"
    sanity "nginx-$l" "$l"
done
# the checks' requests are in Tenantry's counters too: keep a copy from before the runs
for l in "${LEVEL_LIST[@]}"; do
    curl -s --max-time 5 "http://127.0.0.1:$((PORT[tenantry-$l] + 10))/metrics" >"$OUT/tenantry-$l/metrics-before.txt" || true
done

log "=== warm-up ($WARMUP per proxy and request) ==="
for name in "${SYSTEMS[@]}"; do
    for q in "${REQ_LIST[@]}"; do
        wrk_cmd "$name" "$q" "$WARMUP"
        show_cmd "${WRK_CMD[@]}" :: ">/dev/null"
        "${WRK_CMD[@]}" >/dev/null 2>&1 || die "wrk warm-up failed against $name"
    done
done

# ---- measure --------------------------------------------------------------------------------
declare -A V_RPS V_P99 V_P50 V_CPU V_NON V_SERR V_REQ
measure() { # NAME REQ RUN
    local name=$1 q=$2 r=$3 key="$1|$2" f res c0 c1 w0 w1 pb0 pt0 pb1 pt1
    f=$OUT/wrk-$name-$q-$r.txt
    wrk_cmd "$name" "$q" "$DURATION"
    show_cmd "${WRK_CMD[@]}" :: ">$f"
    read -r pb0 pt0 <<<"$(jiffies_sum "${PCPUS[@]}")"
    c0=$(tree_cpu_ticks "${PID[$name]}")
    w0=$(now_ns)
    "${WRK_CMD[@]}" >"$f" 2>&1 || die "wrk failed against $name: $(cat "$f")"
    w1=$(now_ns)
    c1=$(tree_cpu_ticks "${PID[$name]}")
    read -r pb1 pt1 <<<"$(jiffies_sum "${PCPUS[@]}")"
    res=$(parse_wrk "$f") || die "could not parse wrk output $f: $(cat "$f")"
    local v_rps v_p50 v_p99 v_reqs v_non v_serr v_cpu v_pct v_core
    read -r v_rps v_p50 v_p99 v_reqs v_non v_serr <<<"$res"
    v_cpu=$(calc "($c1 - $c0) / $CLK_TCK * 1000000 / $v_reqs" %.1f)
    v_pct=$(calc "($c1 - $c0) / $CLK_TCK / (($w1 - $w0) / 1e9) * 100 / ${#PCPUS[@]}" %.1f)
    v_core=$(calc "($pb1 - $pb0) / ($pt1 - $pt0) * 100" %.1f)
    V_RPS[$key]+=" $v_rps" V_P50[$key]+=" $v_p50" V_P99[$key]+=" $v_p99" V_CPU[$key]+=" $v_cpu"
    V_NON[$key]=$((${V_NON[$key]:-0} + v_non))
    V_SERR[$key]=$((${V_SERR[$key]:-0} + v_serr))
    V_REQ[$key]=$((${V_REQ[$key]:-0} + v_reqs))
    log "$name $q run $r/$RUNS: $v_rps req/s, p50 $v_p50 ms, p99 $v_p99 ms, $v_reqs requests, non-2xx $v_non, socket errors $v_serr;" \
        "proxy cpu ${v_pct}% of its core(s) = $v_cpu us/req (proxy cores busy ${v_core}%)"
    local pct
    pct=$(calc "($v_non + $v_serr) * 100 / $v_reqs" %.3f)
    if [[ $(calc "$pct > $NON2XX_MAX_PCT" %d) == 1 ]]; then
        fail "$name $q run $r: $v_non non-2xx + $v_serr socket errors of $v_reqs requests (${pct}%)"
    fi
    if [[ $(calc "$v_core - $v_pct > 10" %d) == 1 ]]; then
        warn "$name $q run $r: the proxy cores were ${v_core}% busy but the proxy used only ${v_pct}%: something else ran there, figures are noisy"
        NOISY=1
    fi
}

for ((r = 1; r <= RUNS; r++)); do
    for l in "${LEVEL_LIST[@]}"; do
        for q in "${REQ_LIST[@]}"; do
            if ((r % 2)); then
                measure "tenantry-$l" "$q" "$r"
                measure "nginx-$l" "$q" "$r"
            else
                measure "nginx-$l" "$q" "$r"
                measure "tenantry-$l" "$q" "$r"
            fi
        done
    done
done

# Tenantry's own view: WAF decisions (pass/block/busy/unavailable) and status classes
WAF_LINES=()
for l in "${LEVEL_LIST[@]}"; do
    m=$OUT/tenantry-$l/metrics-after.txt
    curl -s --max-time 5 "http://127.0.0.1:$((PORT[tenantry-$l] + 10))/metrics" >"$m" || true
    dec=$(awk '/^tenantry_waf_decisions_total\{/ && /tenant="bench"/ {
            a = $0; sub(/.*action="/, "", a); sub(/".*/, "", a); d[a] += $NF }
        END { s = ""; for (k in d) s = s k "=" d[k] " "; print (s == "" ? "none" : s) }' "$m")
    st=$(awk '/^tenantry_requests_total\{/ && /tenant="bench"/ {
            a = $0; sub(/.*status_class="/, "", a); sub(/".*/, "", a); d[a] += $NF }
        END { s = ""; for (k in d) s = s k "=" d[k] " "; print s }' "$m")
    WAF_LINES+=("$(printf '%-18s waf decisions: %s| responses: %s' "tenantry-$l" "$dec" "$st")")
    busy=$(awk '/^tenantry_waf_decisions_total\{/ && /action="(busy|unavailable)"/ { s += $NF } END { print s + 0 }' "$m")
    ((busy == 0)) || fail "tenantry-$l: $busy WAF inspections answered busy/unavailable (503)"
done
errlines=()
for l in "${LEVEL_LIST[@]}"; do
    # the XSS check's own block is expected: one line on each side
    n=$(grep -E '\[(error|crit|alert|emerg)\]' "$OUT/nginx-$l/error.log" 2>/dev/null | grep -vc 'ModSecurity: Access denied with code 403' || true)
    ((${n:-0} == 0)) || errlines+=("nginx-$l: $n unexpected error lines in $OUT/nginx-$l/error.log")
    n=$(grep -E '"level":"(ERROR|WARN)"' "$OUT/tenantry-$l/stderr.log" 2>/dev/null | grep -vc '"WAF blocked a request"' || true)
    ((${n:-0} == 0)) || errlines+=("tenantry-$l: $n unexpected ERROR/WARN lines in $OUT/tenantry-$l/stderr.log")
done

# ---- report ---------------------------------------------------------------------------------
med() { # ARRAY KEY
    local -n arr=$1
    # shellcheck disable=SC2086 # a word list
    median ${arr[$2]}
}
echo
echo "== waf: medians of $RUNS run(s), wrk -t1 -c$CONNS -d$DURATION --latency; each proxy: $WORKERS worker(s) pinned to core(s) $PROXY_CPUS" \
    "(nginx worker_processes $WORKERS; tenantry runtime.threads $WORKERS + waf.workers $WORKERS); backend nginx + wrk on core $LOAD_CPU =="
echo "checks before measuring:"
printf '  %s\n' "${CHECK_LINES[@]}"
fmt='%-5s %-9s %9s %8s %8s | %9s %8s %8s | %7s %7s | %8s %8s | %-8s %s\n'
for q in "${REQ_LIST[@]}"; do
    echo
    # shellcheck disable=SC2059
    printf "$fmt" req level "T rps" "T p99ms" "T us/req" "N rps" "N p99ms" "N us/req" "T/N rps" "T/N p99" "T/T-off" "N/N-off" "target" "non-2xx+sockerr T / N"
    for l in "${LEVEL_LIST[@]}"; do
        kt="tenantry-$l|$q" kn="nginx-$l|$q"
        trps=$(med V_RPS "$kt") tp99=$(med V_P99 "$kt") tcpu=$(med V_CPU "$kt")
        nrps=$(med V_RPS "$kn") np99=$(med V_P99 "$kn") ncpu=$(med V_CPU "$kn")
        rr=$(calc "$trps / $nrps" %.2f)
        pr=$(calc "$tp99 / $np99" %.2f)
        toff=- noff=- verdict=-
        if has_level off; then
            toff=$(calc "$trps / $(med V_RPS "tenantry-off|$q")" %.3f)
            noff=$(calc "$nrps / $(med V_RPS "nginx-off|$q")" %.3f)
        fi
        if [[ $l != off ]]; then
            if [[ $(calc "$rr >= $TARGET" %d) == 1 ]]; then verdict="met"; else verdict="NOT met"; fi
        fi
        # RPS that counts error answers (e.g. 503 waf_busy) proves nothing
        for k in "$kt" "$kn"; do
            if [[ $(calc "(${V_NON[$k]} + ${V_SERR[$k]}) * 100 / ${V_REQ[$k]} > $NON2XX_MAX_PCT" %d) == 1 ]]; then
                verdict="invalid"
            fi
        done
        # shellcheck disable=SC2059
        printf "$fmt" "$q" "$l" "$(calc "$trps" %.0f)" "$(calc "$tp99" %.2f)" "$(calc "$tcpu" %.1f)" "$(calc "$nrps" %.0f)" "$(calc "$np99" %.2f)" "$(calc "$ncpu" %.1f)" \
            "$rr" "$pr" "$toff" "$noff" "$verdict" \
            "$((V_NON[$kt] + V_SERR[$kt])) / $((V_NON[$kn] + V_SERR[$kn])) of $((V_REQ[$kt])) / $((V_REQ[$kn]))"
    done
done
echo
echo "T = tenantry, N = nginx (+ libmodsecurity when the level is not off); us/req = the proxy process tree's utime+stime per request;"
echo "T/T-off and N/N-off = RPS relative to the same proxy with the WAF off (same request); target = T/N rps >= $TARGET"
echo "(\"invalid\" when either side answered more than $NON2XX_MAX_PCT% non-2xx: wrk's RPS counts those answers too)."
echo "Tenantry's counters after the runs (checks and warm-ups included; requests whose client left before the answer,"
echo "i.e. those in flight when each wrk run stopped, are in no status class):"
printf '  %s\n' "${WAF_LINES[@]}"
if ((${#errlines[@]})); then
    echo "log lines worth a look:"
    printf '  %s\n' "${errlines[@]}"
fi
echo "Figures come from (PORT: $(for n in "${SYSTEMS[@]}"; do printf '%s=%s ' "$n" "${PORT[$n]}"; done)):"
wrk_cmd "${SYSTEMS[0]}" get "$DURATION"
show_cmd "${WRK_CMD[@]}"
echo "(POST: the same with -s $OUT/post.lua and $POST_PATH)"
echo "Configs, stderr/error logs, metrics and raw wrk output: $OUT; total time $(($(date +%s) - T_START)) s"
if ((NOISY)); then
    echo "WARNING: other load was seen on the benchmark cores (see warnings above); rerun on an idle machine."
fi
if ((${#FAILED[@]})); then
    echo "CHECKS FAILED:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "checks: every run stayed at or below $NON2XX_MAX_PCT% non-2xx + socket errors; no WAF busy/unavailable answers"
