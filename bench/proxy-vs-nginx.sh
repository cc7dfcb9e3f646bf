#!/usr/bin/env bash
# Tenantry vs nginx vs HAProxy: one proxy worker each, same two nginx backends, same wrk load.
#
#   bash bench/proxy-vs-nginx.sh                       # full run (builds tenantry if missing)
#   DURATION=3s RUNS=1 SKIP_TENANTRY=1 bash bench/proxy-vs-nginx.sh
#
# Layout (2 cores needed): the proxy under test runs alone on core PROXY_CPU (0); the backend
# nginx (one worker, two server blocks on 127.0.0.1:18001/18002 answering 200 "b1\n"/"b2\n")
# and wrk (-t1) share core LOAD_CPU (1). Every proxy routes Host acme.localhost round robin
# to both backends over keep-alive upstream connections. Only 127.0.0.1 is ever used.
#
# All proxies are started first (each pinned to PROXY_CPU; the idle ones cost nothing) and their
# measured runs are interleaved, the order rotating every round: the VM drifts by 10-20% over
# minutes, and running each proxy's runs in one block let that drift decide the ratios.
# Proxies (PROXIES, space separated; round 1 runs them in this order):
#   nginx           worker_processes 1, access_log /dev/null (combined format, one write/request)
#   nginx-nolog     same, access_log off
#   haproxy         nbthread 1, http-reuse always, "log stdout format raw" + option httplog,
#                   stdout redirected to /dev/null
#   haproxy-nolog   same without any log
#   tenantry        runtime.threads 1, access_log: true, stdout (the JSON access log) > /dev/null
#   tenantry-nolog  same with access_log: false
#   Both run with limits OFF: a fresh data dir (SQLite store) per start under OUT_DIR, a
#   bench-only platform admin (TENANTRY_ADMIN_EMAIL/PASSWORD), and the tenant moved through
#   the admin API to a plan "unlimited" whose limits are all null (the YAML tenant has no
#   `plan:` key, which would win). Without that the tenant would get the default plan's rate
#   limit and most requests would be 429s. bench/limits.sh measures the limits themselves.
# Checks: before measuring, every proxy must answer 200 (tenantry: without RateLimit headers);
# after each run, non-2xx responses + socket errors must stay <= 0.1% of the requests, else
# the script still prints the table but exits 1.
# Ratios are against "nginx" for logging variants and against "nginx-nolog" for -nolog ones
# (falling back to "nginx" when the like-for-like baseline was not run).
#
# Knobs (environment):
#   DURATION=10s RUNS=3 CONNS=64 WARMUP=2s   wrk duration, measured runs per proxy, connections
#   PROXIES="nginx nginx-nolog haproxy haproxy-nolog tenantry tenantry-nolog"
#   SKIP_TENANTRY=1        drop the tenantry variants (e.g. while it does not build)
#   TENANTRY_BIN=path      default target/release/tenantry, built with
#                          `cargo build --release -p tenantry` if missing
#   NGINX_BIN, HAPROXY_BIN, WRK_BIN   default: PATH, then /usr/sbin, /usr/local/sbin
#   PROXY_CPU=0 LOAD_CPU=1 cores for the proxy and for backends+wrk
#   BACKEND_PORT1=18001 BACKEND_PORT2=18002 PORT_BASE=28080 (proxies listen on PORT_BASE+1..)
#   PROFILE=1              one extra run of PROFILE_PROXY (default tenantry) under
#                          `perf record -F 499 --call-graph $PERF_CALLGRAPH` (default dwarf; -g
#                          frame-pointer stacks are mostly useless for Rust release builds);
#                          reports land in OUT_DIR/perf-report*.txt
#   OUT_DIR=dir            where configs, logs and raw wrk output go (default: new
#                          /tmp/tenantry-bench.XXXXXX, kept after the run)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
SKIP_TENANTRY=${SKIP_TENANTRY:-0}
PROXIES=${PROXIES:-nginx nginx-nolog haproxy haproxy-nolog tenantry tenantry-nolog}
PROFILE=${PROFILE:-0}
PROFILE_PROXY=${PROFILE_PROXY:-tenantry}
PERF_CALLGRAPH=${PERF_CALLGRAPH:-dwarf}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT1=${BACKEND_PORT1:-18001}
BACKEND_PORT2=${BACKEND_PORT2:-18002}
PORT_BASE=${PORT_BASE:-28080}
HOST_HEADER=acme.localhost

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer, got '$CONNS'"
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "$v must look like 10s, got '${!v}'"
done

# ---- proxy list -----------------------------------------------------------------------
declare -A PORT=(
    [nginx]=$((PORT_BASE + 1)) [nginx-nolog]=$((PORT_BASE + 2))
    [haproxy]=$((PORT_BASE + 3)) [haproxy-nolog]=$((PORT_BASE + 4))
    [tenantry]=$((PORT_BASE + 5)) [tenantry-nolog]=$((PORT_BASE + 6))
)
declare -a LIST=()
for p in $PROXIES; do
    [[ -n ${PORT[$p]:-} ]] || die "unknown proxy '$p' in PROXIES (known: ${!PORT[*]})"
    if [[ $p == tenantry* && $SKIP_TENANTRY == 1 ]]; then
        continue
    fi
    LIST+=("$p")
done
((${#LIST[@]})) || die "nothing to benchmark (PROXIES='$PROXIES', SKIP_TENANTRY=$SKIP_TENANTRY)"
has() {
    local x
    for x in "${LIST[@]}"; do [[ $x == "$1"* ]] && return 0; done
    return 1
}

# ---- tools ----------------------------------------------------------------------------
NCPU=$(nproc)
((PROXY_CPU < NCPU && LOAD_CPU < NCPU)) || die "need cores $PROXY_CPU and $LOAD_CPU, this machine has $NCPU"
((PROXY_CPU != LOAD_CPU)) || warn "PROXY_CPU == LOAD_CPU: proxy and load generator share a core"
command -v taskset >/dev/null || die "taskset not found (apt-get install -y util-linux)"
command -v curl >/dev/null || die "curl not found"
NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install -y nginx-light) or set NGINX_BIN"
WRK=$(find_bin wrk "${WRK_BIN:-}") || die "wrk not found (apt-get install -y wrk) or set WRK_BIN"
HAPROXY=
if has haproxy; then
    HAPROXY=$(find_bin haproxy "${HAPROXY_BIN:-}") || die "haproxy not found (apt-get install -y haproxy) or set HAPROXY_BIN"
fi
if has tenantry; then
    ensure_tenantry
fi
PERF=
if [[ $PROFILE == 1 ]]; then
    PERF=$(find_bin perf "${PERF_BIN:-}") || die "PROFILE=1 needs perf (apt-get install -y linux-perf)"
fi

ports=("$BACKEND_PORT1" "$BACKEND_PORT2")
for p in "${LIST[@]}"; do
    ports+=("${PORT[$p]}")
    [[ $p == tenantry* ]] && ports+=($((PORT[$p] + 10)))
done
require_free_port "${ports[@]}"

OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT" # nginx workers run as nobody when started by root

trap cleanup_bg EXIT
trap 'exit 130' INT TERM

log "proxy-vs-nginx: output in $OUT"
log "host: $(uname -sr), $NCPU cpus ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
log "nginx: $NGINX ($("$NGINX" -v 2>&1 | sed 's/^nginx version: //'))"
[[ -n $HAPROXY ]] && log "haproxy: $HAPROXY ($("$HAPROXY" -v 2>&1 | awk 'NR == 1 {print $3}'))"
log "wrk: $WRK ($("$WRK" -v 2>&1 | awk 'NR == 1 {print $2}'))"
log "knobs: DURATION=$DURATION RUNS=$RUNS CONNS=$CONNS WARMUP=$WARMUP PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU proxies: ${LIST[*]}"

# ---- configs --------------------------------------------------------------------------
# stub_status on backend 1 counts the connections the proxies open to the backends
HAVE_STUB_STATUS=0
[[ $("$NGINX" -V 2>&1) == *--with-http_stub_status_module* ]] && HAVE_STUB_STATUS=1
STATUS_URL=http://127.0.0.1:$BACKEND_PORT1/__backend_status
backend_status_location() {
    ((HAVE_STUB_STATUS)) && printf '        location = /__backend_status { stub_status; }\n'
    return 0
}
# connections accepted by the backend nginx so far (both ports, our status probes included)
backend_accepts() {
    if ((HAVE_STUB_STATUS)); then
        local s
        s=$(curl -s --max-time 2 "$STATUS_URL") || s=
        awk 'NR == 3 {print $1 + 0; ok = 1} END {if (!ok) print 0}' <<<"$s"
    else
        echo 0
    fi
}

write_backend_conf() {
    mkdir -p "$OUT/backends"
    backend_pair_conf "$OUT/backends" "$NGINX" "$BACKEND_PORT1" "$BACKEND_PORT2" \
        "$(backend_status_location)" >"$OUT/backends/nginx.conf"
}

write_nginx_conf() { # NAME PORT ACCESS_LOG_DIRECTIVE
    local name=$1 port=$2 alog=$3 dir=$OUT/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# $name: one worker, keep-alive upstream, round robin
$(nginx_main_conf "$dir")
http {
    $alog
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$dir" "$NGINX")
    upstream acme {
        server 127.0.0.1:$BACKEND_PORT1;
        server 127.0.0.1:$BACKEND_PORT2;
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
        location / {
            proxy_pass http://acme;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_haproxy_conf() { # NAME PORT LOG(0|1)
    local name=$1 port=$2 withlog=$3 dir=$OUT/$1 glog="" dlog=""
    mkdir -p "$dir"
    if ((withlog)); then
        glog="    log stdout format raw local0 info"
        dlog=$'    log global\n    option httplog'
    fi
    cat >"$dir/haproxy.cfg" <<EOF
# $name: one thread, keep-alive both sides, server connection reuse, round robin
global
    nbthread 1
    maxconn 4096
$glog

defaults
    mode http
$dlog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    http-reuse always

frontend fe
    bind 127.0.0.1:$port
    acl is_acme req.hdr(host),field(1,:) -i $HOST_HEADER
    http-request deny deny_status 404 unless is_acme
    default_backend acme

backend acme
    balance roundrobin
    server b1 127.0.0.1:$BACKEND_PORT1
    server b2 127.0.0.1:$BACKEND_PORT2
EOF
}

write_tenantry_conf() { # NAME PORT ACCESS_LOG(true|false)
    local name=$1 port=$2 alog=$3 dir=$OUT/$1
    mkdir -p "$dir"
    cat >"$dir/tenantry.yaml" <<EOF
# $name: one runtime worker thread, access_log $alog (stdout goes to /dev/null)
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$((port + 10)) }
access_log: $alog
runtime: { threads: 1 }
metrics: { max_tenants: 1000 }
# bench only: stop fast on SIGTERM, keep the upgrade socket inside the bench dir
shutdown: { drain: 0ms, grace: 2s }
upgrade_socket: $dir/upgrade.sock
# no plan key: the tenant is moved to the "unlimited" plan through the admin API
$(acme_tenant_yaml "$HOST_HEADER" "$BACKEND_PORT1" "$BACKEND_PORT2")
EOF
}

# start_proxy NAME: writes the config, starts the proxy pinned to PROXY_CPU; sets PROXY_PID
start_proxy() {
    local name=$1 port=${PORT[$1]} dir=$OUT/$1 out=/dev/null
    case $name in
    nginx | nginx-nolog)
        if [[ $name == nginx ]]; then
            write_nginx_conf "$name" "$port" "access_log /dev/null combined;"
        else
            write_nginx_conf "$name" "$port" "access_log off;"
        fi
        nginx_cmd "$NGINX" "$dir" "$dir/nginx.conf"
        "${NGINX_CMD[@]}" -t -q >"$dir/configtest.log" 2>&1 || {
            cat "$dir/configtest.log" >&2
            die "nginx rejected $dir/nginx.conf"
        }
        start_bg "$out" "$dir/stderr.log" taskset -c "$PROXY_CPU" "${NGINX_CMD[@]}"
        ;;
    haproxy | haproxy-nolog)
        write_haproxy_conf "$name" "$port" "$([[ $name == haproxy ]] && echo 1 || echo 0)"
        "$HAPROXY" -c -q -f "$dir/haproxy.cfg" >"$dir/configtest.log" 2>&1 || {
            cat "$dir/configtest.log" >&2
            die "haproxy rejected $dir/haproxy.cfg"
        }
        # -db: foreground, no master-worker: a single process with one thread
        start_bg "$out" "$dir/stderr.log" taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$dir/haproxy.cfg"
        ;;
    tenantry | tenantry-nolog)
        write_tenantry_conf "$name" "$port" "$([[ $name == tenantry ]] && echo true || echo false)"
        rm -rf "$dir/data" # a fresh store every start
        start_bg "$out" "$dir/stderr.log" env -u TENANTRY_REDIS -u TENANTRY_STORE -u TENANTRY_DATA_DIR \
            "TENANTRY_ADMIN_EMAIL=$ADMIN_EMAIL" "TENANTRY_ADMIN_PASSWORD=$ADMIN_PASSWORD" \
            taskset -c "$PROXY_CPU" "$TENANTRY_BIN" serve --config "$dir/tenantry.yaml" --data-dir "$dir/data"
        ;;
    esac
    PROXY_PID=$SPAWNED_PID
    wait_http "http://127.0.0.1:$port/" "$HOST_HEADER" "$PROXY_PID" "$dir/stderr.log" 60 ||
        die "$name did not come up"
    if [[ $name == tenantry* ]]; then
        set_unlimited $((port + 10)) acme
    fi
}

# ---- tenantry: limits off through the admin API ------------------------------------------
# (ADMIN_EMAIL, api and set_unlimited are in lib.sh)

# sanity_check NAME PORT: 4 requests must all be 200 and reach both backends
sanity_check() {
    local name=$1 port=$2 i code body seen=""
    # give the proxy up to 5 s to report the backends usable (e.g. first health check)
    for ((i = 0; i < 50; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" || true) == 200 ]] && break
        sleep 0.1
    done
    for i in 1 2 3 4; do
        body=$(curl -s -w '|%{http_code}' --max-time 5 -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/") || true
        code=${body##*|}
        body=${body%|*}
        [[ $code == 200 ]] || die "$name: request $i to http://127.0.0.1:$port/ answered '$code' (body: ${body:0:200})"
        seen+="${body//$'\n'/} "
    done
    if [[ $seen != *b1* || $seen != *b2* ]]; then
        warn "$name: 4 requests did not reach both backends (bodies: $seen); round robin broken?"
    fi
    if [[ $name == tenantry* ]]; then
        # limits off: a limited route would add RateLimit-* headers to every response
        body=$(curl -s -D - -o /dev/null --max-time 5 -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" | tr -d '\r') || true
        if grep -qi '^ratelimit-' <<<"$body"; then
            die "$name: rate limiting is on ($(grep -i '^ratelimit-' <<<"$body" | tr '\n' ' ')); the figures would not compare"
        fi
    fi
    log "$name: sanity ok (bodies: $seen)"
}

WRK_ARGS=(-t1 "-c$CONNS" "-d$DURATION" -H "Host: $HOST_HEADER" --latency)

declare -A M_RPS M_P50 M_P99 M_CPU M_PCT M_LOAD M_ERR M_UP
# per-run values, space-separated, per proxy (the runs of all proxies are interleaved)
declare -A V_RPS V_P50 V_P99 V_CPU V_PCT V_LOAD V_UP V_ERR PROXY_PIDS

# setup_proxy NAME: starts the proxy, checks it, warms it up; it then idles until its runs
setup_proxy() {
    local name=$1 port=${PORT[$1]}
    log "=== $name (127.0.0.1:$port) ==="
    start_proxy "$name"
    PROXY_PIDS[$name]=$PROXY_PID
    sanity_check "$name" "$port"
    log "$name: warm-up $WARMUP"
    show_cmd taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$CONNS" "-d$WARMUP" -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" :: ">/dev/null"
    taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$CONNS" "-d$WARMUP" -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" >/dev/null
}

# measure_proxy NAME RUN: one measured wrk run against the running proxy NAME
measure_proxy() {
    local name=$1 r=$2 port=${PORT[$1]} pid=${PROXY_PIDS[$1]} f res
    local a0 a1 c0 c1 w0 w1 pb0 pt0 pb1 pt1 lb0 lt0 lb1 lt1
    f=$OUT/wrk-$name-$r.txt
    show_cmd taskset -c "$LOAD_CPU" "$WRK" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/" :: ">$f"
    read -r pb0 pt0 <<<"$(cpu_jiffies "$PROXY_CPU")"
    read -r lb0 lt0 <<<"$(cpu_jiffies "$LOAD_CPU")"
    a0=$(backend_accepts)
    c0=$(tree_cpu_ticks "$pid")
    w0=$(now_ns)
    taskset -c "$LOAD_CPU" "$WRK" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/" >"$f" 2>&1 ||
        die "wrk failed against $name: $(cat "$f")"
    w1=$(now_ns)
    c1=$(tree_cpu_ticks "$pid")
    read -r pb1 pt1 <<<"$(cpu_jiffies "$PROXY_CPU")"
    read -r lb1 lt1 <<<"$(cpu_jiffies "$LOAD_CPU")"
    a1=$(backend_accepts)
    res=$(parse_wrk "$f") || die "could not parse wrk output $f: $(cat "$f")"
    local v_rps v_p50 v_p99 v_reqs v_err v_non v_serr v_cpu v_pct v_load v_core v_up
    read -r v_rps v_p50 v_p99 v_reqs v_non v_serr <<<"$res"
    v_err=$((v_non + v_serr))
    v_cpu=$(calc "($c1 - $c0) / $CLK_TCK * 1000000 / $v_reqs" %.2f)
    v_pct=$(calc "($c1 - $c0) / $CLK_TCK / (($w1 - $w0) / 1e9) * 100" %.1f)
    v_core=$(calc "($pb1 - $pb0) / ($pt1 - $pt0) * 100" %.1f)
    v_load=$(calc "($lb1 - $lb0) / ($lt1 - $lt0) * 100" %.1f)
    v_up=$((a1 - a0 - 1)) # minus the status probe itself
    ((HAVE_STUB_STATUS)) || v_up=n/a
    V_RPS[$name]+=" $v_rps" V_P50[$name]+=" $v_p50" V_P99[$name]+=" $v_p99" V_CPU[$name]+=" $v_cpu"
    V_PCT[$name]+=" $v_pct" V_LOAD[$name]+=" $v_load" V_UP[$name]+=" $v_up"
    V_ERR[$name]=$((${V_ERR[$name]:-0} + v_err))
    log "$name run $r/$RUNS: $v_rps req/s, p50 $v_p50 ms, p99 $v_p99 ms, $v_reqs requests, errors $v_err;" \
        "proxy cpu ${v_pct}% = $v_cpu us/req; core $PROXY_CPU busy ${v_core}%, core $LOAD_CPU (wrk+backends) busy ${v_load}%;" \
        "new upstream connections $v_up"
    ((v_err == 0)) || warn "$name run $r: $v_err non-2xx responses or socket errors (see $f)"
    if [[ $(calc "$v_err * 100 / $v_reqs > $NON2XX_MAX_PCT" %d) == 1 ]]; then
        warn "$name run $r: $v_non non-2xx + $((v_err - v_non)) socket errors = $(calc "$v_err * 100 / $v_reqs" %.2f)% of $v_reqs requests: figures are not comparable"
        BAD_RUNS+=("$name run $r: $v_non non-2xx, $((v_err - v_non)) socket errors of $v_reqs requests")
    fi
    if [[ $(calc "$v_core - $v_pct > 10" %d) == 1 ]]; then
        warn "$name run $r: core $PROXY_CPU was ${v_core}% busy but the proxy used only ${v_pct}%: something else ran on it (cargo?), figures are noisy"
        NOISY=1
    fi
}

# finish_proxy NAME: the optional profile run, then stop, then the medians
finish_proxy() {
    local name=$1
    PROXY_PID=${PROXY_PIDS[$name]}
    if [[ $PROFILE == 1 && $name == "$PROFILE_PROXY" ]]; then
        profile_run "$name" "${PORT[$name]}"
    fi
    stop_pid "$PROXY_PID"
    # shellcheck disable=SC2086 # word lists
    {
        M_RPS[$name]=$(median ${V_RPS[$name]})
        M_P50[$name]=$(median ${V_P50[$name]})
        M_P99[$name]=$(median ${V_P99[$name]})
        M_CPU[$name]=$(median ${V_CPU[$name]})
        M_PCT[$name]=$(median ${V_PCT[$name]})
        M_LOAD[$name]=$(median ${V_LOAD[$name]})
        M_UP[$name]=$(echo ${V_UP[$name]} | tr ' ' /)
    }
    M_ERR[$name]=${V_ERR[$name]:-0}
}

# bench_all: every proxy is started first (each pinned to PROXY_CPU; the idle ones cost
# nothing), then the measured runs are interleaved, the order rotating every round, so that
# the VM's drift over minutes hits every proxy alike instead of whichever ran last
bench_all() {
    local n=${#LIST[@]} r i name
    for name in "${LIST[@]}"; do setup_proxy "$name"; done
    for ((r = 1; r <= RUNS; r++)); do
        for ((i = 0; i < n; i++)); do
            measure_proxy "${LIST[(i + r - 1) % n]}" "$r"
        done
    done
    for name in "${LIST[@]}"; do finish_proxy "$name"; done
}

profile_run() {
    local name=$1 port=$2 secs data=$OUT/perf-$1.data perf_pid
    secs=$(dur_to_secs "$DURATION")
    log "$name: PROFILE=1, extra run under perf (not part of the figures)"
    # the proxy and its children (nginx's worker is a child of its master)
    local pids=$PROXY_PID kids
    kids=$(pgrep -d, -P "$PROXY_PID" || true)
    [[ -n $kids ]] && pids+=",$kids"
    show_cmd taskset -c "$LOAD_CPU" "$PERF" record -F 499 --call-graph "$PERF_CALLGRAPH" -p "$pids" -o "$data" -- sleep "$secs" :: ">$OUT/perf-record.log 2>&1 &"
    taskset -c "$LOAD_CPU" "$PERF" record -F 499 --call-graph "$PERF_CALLGRAPH" -p "$pids" -o "$data" -- sleep "$secs" >"$OUT/perf-record.log" 2>&1 &
    perf_pid=$!
    sleep 0.2
    show_cmd taskset -c "$LOAD_CPU" "$WRK" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/" :: ">$OUT/wrk-$name-perf.txt"
    taskset -c "$LOAD_CPU" "$WRK" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/" >"$OUT/wrk-$name-perf.txt" 2>&1 || true
    if ! wait "$perf_pid"; then
        warn "perf record failed: $(tail -n 5 "$OUT/perf-record.log")"
        return 0
    fi
    show_cmd "$PERF" report -i "$data" --stdio :: "| head -60 >$OUT/perf-report.txt"
    "$PERF" report -i "$data" --stdio >"$OUT/perf-report-full.txt" 2>/dev/null || true
    head -n 60 "$OUT/perf-report-full.txt" >"$OUT/perf-report.txt"
    show_cmd "$PERF" report -i "$data" --stdio --no-children --sort symbol -g none :: "| head -60 >$OUT/perf-report-flat.txt"
    "$PERF" report -i "$data" --stdio --no-children --sort symbol -g none >"$OUT/perf-report-flat.full.txt" 2>/dev/null || true
    head -n 60 "$OUT/perf-report-flat.full.txt" >"$OUT/perf-report-flat.txt"
    log "$name: perf reports in $OUT/perf-report.txt (call graph) and $OUT/perf-report-flat.txt (flat)"
}

# ---- run ------------------------------------------------------------------------------
NOISY=0
NON2XX_MAX_PCT=0.1
BAD_RUNS=()
# pre-flight: the two cores should be idle before we start
preflight "$LOAD_CPU" "$PROXY_CPU"
write_backend_conf
nginx_cmd "$NGINX" "$OUT/backends" "$OUT/backends/nginx.conf"
"${NGINX_CMD[@]}" -t -q >"$OUT/backends/configtest.log" 2>&1 || {
    cat "$OUT/backends/configtest.log" >&2
    die "nginx rejected the backend config"
}
log "=== backends (nginx, core $LOAD_CPU) ==="
start_bg /dev/null "$OUT/backends/stderr.log" taskset -c "$LOAD_CPU" "${NGINX_CMD[@]}"
BACKEND_PID=$SPAWNED_PID
wait_http "http://127.0.0.1:$BACKEND_PORT1/" x "$BACKEND_PID" "$OUT/backends/stderr.log" 30 || die "backends did not come up"
wait_http "http://127.0.0.1:$BACKEND_PORT2/" x "$BACKEND_PID" "$OUT/backends/stderr.log" 30 || die "backends did not come up"

bench_all

# ---- report ---------------------------------------------------------------------------
baseline_for() {
    if [[ $1 == *-nolog && -n ${M_RPS[nginx-nolog]:-} ]]; then
        echo nginx-nolog
    elif [[ -n ${M_RPS[nginx]:-} ]]; then
        echo nginx
    elif [[ -n ${M_RPS[nginx-nolog]:-} ]]; then
        echo nginx-nolog
    fi
}

echo
echo "== proxy-vs-nginx: medians of $RUNS run(s), wrk -t1 -c$CONNS -d$DURATION, proxy pinned to core $PROXY_CPU, backends+wrk on core $LOAD_CPU =="
fmt='%-15s %8s %8s %8s %10s %9s %9s %6s %8s %8s %8s %8s  %s\n'
# shellcheck disable=SC2059
printf "$fmt" proxy "rps" "p50 ms" "p99 ms" "cpu us/req" "proxy cpu" "load core" errors "upconns" "rps/base" "p99/base" "cpu/base" base
for name in "${LIST[@]}"; do
    base=$(baseline_for "$name")
    if [[ -n $base ]]; then
        rr=$(calc "${M_RPS[$name]} / ${M_RPS[$base]}" %.3f)
        pr=$(calc "${M_P99[$name]} / ${M_P99[$base]}" %.3f)
        cr=$(calc "${M_CPU[$name]} / ${M_CPU[$base]}" %.3f)
    else
        rr=n/a pr=n/a cr=n/a base=-
    fi
    # shellcheck disable=SC2059
    printf "$fmt" "$name" "$(calc "${M_RPS[$name]}" %.0f)" "$(calc "${M_P50[$name]}" %.3f)" "$(calc "${M_P99[$name]}" %.3f)" \
        "$(calc "${M_CPU[$name]}" %.2f)" "$(calc "${M_PCT[$name]}" %.1f)%" "$(calc "${M_LOAD[$name]}" %.1f)%" "${M_ERR[$name]}" "${M_UP[$name]}" "$rr" "$pr" "$cr" "$base"
done
echo
echo "Figures come from, per proxy (PORT: $(for n in "${LIST[@]}"; do printf '%s=%s ' "$n" "${PORT[$n]}"; done)):"
show_cmd taskset -c "$LOAD_CPU" "$WRK" "${WRK_ARGS[@]}" "http://127.0.0.1:PORT/"
echo "cpu us/req = (utime+stime of the proxy process tree from /proc/PID/stat, before/after the wrk run) / requests;"
echo "proxy cpu = that CPU time / wall time; load core = busy share of core $LOAD_CPU (wrk + backends) from /proc/stat."
echo "upconns = connections the backends accepted during each run (per run, '/'-separated; keep-alive => stays <= pool size, ~0 after warm-up)."
echo "If 'load core' is near 100% and 'proxy cpu' is well below it, the load generator is the bottleneck, not the proxy."
echo "tenantry writes its JSON access log to stdout, redirected to /dev/null; nginx logs to /dev/null, haproxy to stdout > /dev/null."
echo "Configs, stderr logs and raw wrk output: $OUT"
if ((NOISY)); then
    echo "WARNING: other load was seen on the benchmark cores (see warnings above); rerun on an idle machine."
fi
if ((${#BAD_RUNS[@]})); then
    echo "CHECK FAILED: non-2xx responses or socket errors above $NON2XX_MAX_PCT% of the requests:"
    printf '  - %s\n' "${BAD_RUNS[@]}"
    exit 1
fi
echo "non-2xx check: every run stayed at or below $NON2XX_MAX_PCT% non-2xx + socket errors (column 'errors' = their count over all runs)"
