#!/usr/bin/env bash
# What rate limiting costs the gateway, and whether it keeps tenants apart.
#
#   bash bench/limits.sh                                # everything, ~4 min (builds tenantry if missing)
#   PARTS=rps RUNS=1 DURATION=5s bash bench/limits.sh   # quick look at part a only
#
# a. rps: limits off vs on. Same layout and wrk command as bench/proxy-vs-nginx.sh: the
#    gateway (runtime.threads 1, access_log false) alone on core PROXY_CPU (0); one backend
#    nginx (127.0.0.1:18001/18002, 200 "b1\n"/"b2\n") and wrk -t1 -c64 on core LOAD_CPU (1);
#    Host acme.localhost, round robin to both backends. Three gateways (all started first, each
#    pinned to PROXY_CPU; the runs are interleaved off/local/redis, the order rotating every
#    round, because the VM drifts by ±10% over minutes and would otherwise bias the ratios):
#      off    the tenant on an "unlimited" plan (every limit null, made through the admin API),
#             no route ratelimit: no admission step at all
#      local  same plan + route ratelimit { requests_per_minute: 100000000, burst: 1000000,
#             key: route } (never refuses): one in-process GCRA decision per request
#      redis  same as local + `serve --redis $REDIS_URL`: one GCRA decision on Redis per request (concurrent ones share an EVALSHA)
#    Medians of RUNS runs (after a WARMUP run): RPS, p50, p99, gateway CPU per request, and
#    the ratios on/off. With RPS_DELAY_MS=N every connection waits N ms after each response
#    (wrk `delay()`), so the offered load is fixed below saturation and the p99 difference is
#    the latency a decision adds rather than the queueing of a slower saturated gateway. redis-server is not pinned (it is not ours); its CPU is reported.
# b. noisy: one gateway (default threads, not pinned) with two tenants, both on the unlimited
#    plan: A ("noisy", noisy.localhost) with route ratelimit { requests_per_minute: 6000,
#    burst: 100 } (100/s), B ("quiet", quiet.localhost) with a limit it never reaches
#    (600000/min). B sends steady traffic (wrk -t1 -c16, each connection waits
#    STEADY_DELAY_MS between requests: ~1,500 req/s). NN_ROUNDS rounds of three NN_DURATION
#    phases: B alone; B while A is flooded paced (wrk -c32, PACED_DELAY_MS between requests:
#    ~2,300 req/s, ~23x A's limit); B while A is flooded at full speed (wrk -c32, no delay,
#    hundreds of times its limit). Reported (medians over the rounds): B's p50/p99, its p99
#    range (the noise floor), its 2xx share, the p99 change vs alone; A's rate, 429 share and
#    2xx/s. Once with the local limiter, once with --redis.
# c. limiter: bench/limiter.sh (cargo run of the limiter micro-benchmark: local ns/decision,
#    Redis decisions/s and p50/p99 at 64 concurrent callers). Runs last, it compiles.
#
# Every gateway gets a fresh data dir (its SQLite store) under OUT_DIR and a bench-only
# platform admin (TENANTRY_ADMIN_EMAIL/PASSWORD) to create the plan; tenant ids carry this
# script's pid so Redis keys never collide with other runs (rate-limit keys expire by
# themselves; this node's tn:nodes heartbeat is removed at the end). Only 127.0.0.1 is used.
#
# Knobs (environment):
#   PARTS="rps noisy limiter"       which parts, in this order
#   DURATION=10s RUNS=3 CONNS=64 WARMUP=2s   part a wrk settings (as proxy-vs-nginx.sh)
#   RPS_DELAY_MS=                   part a: unset = closed loop at full speed (saturated);
#                                   N = each connection waits N ms between requests
#   NN_DURATION=5s NN_ROUNDS=3 STEADY_CONNS=16 STEADY_DELAY_MS=10 FLOOD_CONNS=32 PACED_DELAY_MS=13
#   A_RPM=6000 A_BURST=100 B_RPM=600000 HIGH_RPM=100000000   limits (requests per minute)
#   VARIANTS="off local redis"     part a gateways (off is the baseline; runs rotate through them)
#   MODES="local redis"            limiter modes of part b
#   REDIS_URL=redis://127.0.0.1:6379   (must be on 127.0.0.1); needs redis-cli for the checks
#   LIMITER_ARGS="--seconds 5 --concurrency 64"   extra arguments of bench/limiter.sh
#   TENANTRY_BIN, NGINX_BIN, WRK_BIN, PROXY_CPU=0, LOAD_CPU=1, BACKEND_PORT1=18001,
#   BACKEND_PORT2=18002, PORT_BASE=28380 (gateways on PORT_BASE+1..5, admin on +11..15)
#   BACKEND=auto                   nginx | demo (tenantry demo-backends) | auto (nginx if found)
#   OUT_DIR=dir                    configs, logs, raw wrk output (default: new
#                                  /tmp/tenantry-limits.XXXXXX, kept after the run)
# Exit status: 1 if a check failed (a non-2xx share above 0.1% where none is expected, a
# missing RateLimit header, Redis errors, decisions not taken on Redis).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PARTS=${PARTS:-rps noisy limiter}
DURATION=${DURATION:-10s}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
RPS_DELAY_MS=${RPS_DELAY_MS:-}
[[ -z $RPS_DELAY_MS || $RPS_DELAY_MS =~ ^[0-9]+$ ]] || die "RPS_DELAY_MS must be a whole number of ms, got '$RPS_DELAY_MS'"
WARMUP=${WARMUP:-2s}
NN_DURATION=${NN_DURATION:-5s}
NN_ROUNDS=${NN_ROUNDS:-3}
STEADY_CONNS=${STEADY_CONNS:-16}
STEADY_DELAY_MS=${STEADY_DELAY_MS:-10}
FLOOD_CONNS=${FLOOD_CONNS:-32}
PACED_DELAY_MS=${PACED_DELAY_MS:-13}
A_RPM=${A_RPM:-6000}
A_BURST=${A_BURST:-100}
B_RPM=${B_RPM:-600000}
HIGH_RPM=${HIGH_RPM:-100000000}
MODES=${MODES:-local redis}
VARIANTS=${VARIANTS:-off local redis}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
LIMITER_ARGS=${LIMITER_ARGS:---seconds 5 --concurrency 64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND=${BACKEND:-auto}
BACKEND_PORT1=${BACKEND_PORT1:-18001}
BACKEND_PORT2=${BACKEND_PORT2:-18002}
PORT_BASE=${PORT_BASE:-28380}
TAG=lb$$                           # tenant id prefix: Redis keys are named after tenants
NON2XX_MAX_PCT=0.1

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $NN_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "NN_ROUNDS must be a positive integer, got '$NN_ROUNDS'"
for v in NN_ROUNDS CONNS STEADY_CONNS STEADY_DELAY_MS FLOOD_CONNS PACED_DELAY_MS A_RPM A_BURST B_RPM HIGH_RPM; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be an integer, got '${!v}'"
done
for v in DURATION WARMUP NN_DURATION; do
    [[ ${!v} =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "$v must look like 10s, got '${!v}'"
done
[[ $REDIS_URL =~ ^redis://(127\.[0-9.]+|localhost)(:[0-9]+)?(/[0-9]+)?$ ]] ||
    die "REDIS_URL must point at 127.0.0.0/8 (redis://127.0.0.1:PORT[/DB]), got '$REDIS_URL'"
want() { [[ " $PARTS " == *" $1 "* ]]; }
for p in $PARTS; do [[ $p =~ ^(rps|noisy|limiter)$ ]] || die "unknown part '$p' in PARTS (rps noisy limiter)"; done
for m in $MODES; do [[ $m =~ ^(local|redis)$ ]] || die "unknown mode '$m' in MODES (local redis)"; done
for v in $VARIANTS; do [[ $v =~ ^(off|local|redis)$ ]] || die "unknown variant '$v' in VARIANTS (off local redis)"; done
[[ " $VARIANTS " == *" off "* ]] || die "VARIANTS must include off (the baseline)"
NEED_REDIS=0
if want rps || { want noisy && [[ " $MODES " == *" redis "* ]]; }; then NEED_REDIS=1; fi

# ---- tools ------------------------------------------------------------------------------
NCPU=$(nproc)
((PROXY_CPU < NCPU && LOAD_CPU < NCPU)) || die "need cores $PROXY_CPU and $LOAD_CPU, this machine has $NCPU"
command -v taskset >/dev/null || die "taskset not found (apt-get install -y util-linux)"
command -v curl >/dev/null || die "curl not found"
WRK=$(find_bin wrk "${WRK_BIN:-}") || die "wrk not found (apt-get install -y wrk) or set WRK_BIN"
ensure_tenantry
case $BACKEND in
auto) if NGINX=$(find_bin nginx "${NGINX_BIN:-}"); then BACKEND=nginx; else BACKEND=demo; fi ;;
nginx) NGINX=$(find_bin nginx "${NGINX_BIN:-}") || die "nginx not found (apt-get install -y nginx-light) or set NGINX_BIN" ;;
demo) ;;
*) die "BACKEND must be nginx, demo or auto" ;;
esac
REDIS_CLI=
REDIS_PID=
if ((NEED_REDIS)); then
    REDIS_CLI=$(command -v redis-cli || true)
    if [[ -n $REDIS_CLI ]]; then
        [[ $("$REDIS_CLI" -u "$REDIS_URL" ping 2>/dev/null) == PONG ]] || die "Redis does not answer at $REDIS_URL (start redis-server)"
        REDIS_PID=$("$REDIS_CLI" -u "$REDIS_URL" info server | awk -F: '/^process_id:/ {print $2 + 0}')
    else
        warn "redis-cli not found: the EVALSHA count and Redis CPU checks are skipped"
    fi
fi

declare -A GW_PORT=([rps-off]=$((PORT_BASE + 1)) [rps-local]=$((PORT_BASE + 2)) [rps-redis]=$((PORT_BASE + 3))
    [nn-local]=$((PORT_BASE + 4)) [nn-redis]=$((PORT_BASE + 5)))
ports=("$BACKEND_PORT1" "$BACKEND_PORT2")
for k in "${!GW_PORT[@]}"; do ports+=("${GW_PORT[$k]}" $((GW_PORT[$k] + 10))); done
want rps || want noisy || ports=()
((${#ports[@]} == 0)) || require_free_port "${ports[@]}"

OUT=${OUT_DIR:-$(mktemp -d /tmp/tenantry-limits.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT" # nginx workers run as nobody when started by root

NODES=() # cluster node ids this run registered in Redis
cleanup() {
    cleanup_bg
    if [[ -n $REDIS_CLI ]] && ((${#NODES[@]})); then
        "$REDIS_CLI" -u "$REDIS_URL" hdel tn:nodes "${NODES[@]}" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T_START=$(date +%s)

log "limits: output in $OUT"
log "host: $(uname -sr), $NCPU cpus ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
log "wrk: $WRK ($("$WRK" -v 2>&1 | awk 'NR == 1 {print $2}')); backend: $BACKEND${NGINX:+ ($NGINX)}"
((NEED_REDIS)) && [[ -n $REDIS_CLI ]] && log "redis: $REDIS_URL ($("$REDIS_CLI" -u "$REDIS_URL" info server | awk -F: '/^redis_version:/ {sub(/\r/, "", $2); print $2}'), pid ${REDIS_PID:-?})"
log "knobs: PARTS='$PARTS' DURATION=$DURATION RUNS=$RUNS CONNS=$CONNS RPS_DELAY_MS=${RPS_DELAY_MS:-none} WARMUP=$WARMUP NN_DURATION=$NN_DURATION" \
    "NN_ROUNDS=$NN_ROUNDS STEADY_CONNS=$STEADY_CONNS STEADY_DELAY_MS=$STEADY_DELAY_MS FLOOD_CONNS=$FLOOD_CONNS PACED_DELAY_MS=$PACED_DELAY_MS" \
    "A_RPM=$A_RPM A_BURST=$A_BURST B_RPM=$B_RPM HIGH_RPM=$HIGH_RPM MODES='$MODES'"

# ---- helpers ----------------------------------------------------------------------------

# curl_code URL HOST [extra curl args]: HTTP status only
curl_code() {
    local url=$1 host=$2
    shift 2
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $host" "$@" "$url" 2>/dev/null || true
}

# (api and set_unlimited are in lib.sh)

# start_gateway NAME PIN(cpu|"") REDIS(0|1): starts tenantry with $OUT/NAME/tenantry.yaml and a
# fresh data dir; sets GW_PID
start_gateway() {
    local name=$1 pin=$2 redis=$3 dir=$OUT/$1 port=${GW_PORT[$1]}
    local -a cmd=(env -u TENANTRY_REDIS -u TENANTRY_STORE -u TENANTRY_DATA_DIR
        "TENANTRY_ADMIN_EMAIL=$ADMIN_EMAIL" "TENANTRY_ADMIN_PASSWORD=$ADMIN_PASSWORD")
    rm -rf "$dir/data"
    [[ -n $pin ]] && cmd+=(taskset -c "$pin")
    cmd+=("$TENANTRY_BIN" serve --config "$dir/tenantry.yaml" --data-dir "$dir/data")
    ((redis)) && cmd+=(--redis "$REDIS_URL")
    start_bg /dev/null "$dir/stderr.log" "${cmd[@]}"
    GW_PID=$SPAWNED_PID
    wait_http "http://127.0.0.1:$((port + 10))/readyz" x "$GW_PID" "$dir/stderr.log" 60 || die "$name did not come up"
}

# gw_yaml NAME REDIS(0|1) THREADS_LINE: the common head of a gateway config
gw_yaml() {
    local name=$1 redis=$2 port=${GW_PORT[$1]}
    printf '# %s (bench/limits.sh)\nlisten: 127.0.0.1:%s\nadmin: { listen: 127.0.0.1:%s }\n' "$name" "$port" $((port + 10))
    printf 'access_log: false\n%smetrics: { max_tenants: 1000 }\n' "$3"
    printf 'shutdown: { drain: 0ms, grace: 2s }\nupgrade_socket: %s/upgrade.sock\n' "$OUT/$name"
    if ((redis)); then
        printf 'cluster: { node_id: bench-limits-%s-%s }\n' "$$" "$name"
        NODES+=("bench-limits-$$-$name")
    fi
    printf 'tenants:\n'
}

backend_lines() {
    printf '          - { address: 127.0.0.1:%s }\n          - { address: 127.0.0.1:%s }\n' "$BACKEND_PORT1" "$BACKEND_PORT2"
}

# stop_gw: stops the current gateway and forgets its pid (so the exit trap never signals a
# recycled pid)
stop_gw() {
    stop_pid "$GW_PID"
    forget_pid "$GW_PID"
}
forget_pid() {
    local i
    for i in "${!BG_PIDS[@]}"; do
        [[ ${BG_PIDS[i]} == "$1" ]] && unset 'BG_PIDS[i]'
    done
    BG_PIDS=("${BG_PIDS[@]}")
}

# metric_sum FILE REGEX: sum of the values of the metric lines matching REGEX
metric_sum() { awk -v re="$2" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d\n", s }' "$1"; }

scrape() { # NAME LABEL: saves /metrics of gateway NAME
    curl -s --max-time 5 "http://127.0.0.1:$((GW_PORT[$1] + 10))/metrics" >"$OUT/$1/metrics-$2.txt" || true
}

evalsha_calls() {
    if [[ -n $REDIS_CLI ]]; then
        "$REDIS_CLI" -u "$REDIS_URL" info commandstats | awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3; f = 1} END {if (!f) print 0}'
    else
        echo 0
    fi
}
# shared_decisions PORT: the gateway's rate-limit decisions taken on Redis so far
shared_decisions() {
    curl -s --max-time 5 "http://127.0.0.1:$(($1 + 10))/metrics" |
        awk '/^tenantry_ratelimit_decisions_total\{source="shared"\}/ {print $2; f = 1} END {if (!f) print 0}'
}
redis_ticks() {
    if [[ -n $REDIS_PID && -r /proc/$REDIS_PID/stat ]]; then tree_cpu_ticks "$REDIS_PID"; else echo 0; fi
}

# check_non2xx WHAT REQUESTS NON2XX SOCKERR: fails when more than NON2XX_MAX_PCT% failed
check_non2xx() {
    local pct
    pct=$(calc "($3 + $4) * 100 / $2" %.3f)
    if [[ $(calc "$pct > $NON2XX_MAX_PCT" %d) == 1 ]]; then
        fail "$1: $3 non-2xx + $4 socket errors of $2 requests (${pct}%)"
    fi
}

NOISY=0
# ---- backends ---------------------------------------------------------------------------
start_backends() {
    local dir=$OUT/backends
    mkdir -p "$dir"
    log "=== backends ($BACKEND, core $LOAD_CPU) ==="
    if [[ $BACKEND == nginx ]]; then
        backend_pair_conf "$dir" "$NGINX" "$BACKEND_PORT1" "$BACKEND_PORT2" >"$dir/nginx.conf"
        nginx_cmd "$NGINX" "$dir" "$dir/nginx.conf"
        "${NGINX_CMD[@]}" -t -q >"$dir/configtest.log" 2>&1 || {
            cat "$dir/configtest.log" >&2
            die "nginx rejected the backend config"
        }
        start_bg /dev/null "$dir/stderr.log" taskset -c "$LOAD_CPU" "${NGINX_CMD[@]}"
    else
        start_bg /dev/null "$dir/stderr.log" taskset -c "$LOAD_CPU" "$TENANTRY_BIN" demo-backends \
            --listen "127.0.0.1:$BACKEND_PORT1" --listen "127.0.0.1:$BACKEND_PORT2"
    fi
    local pid=$SPAWNED_PID
    wait_http "http://127.0.0.1:$BACKEND_PORT1/" x "$pid" "$dir/stderr.log" 30 || die "backends did not come up"
    wait_http "http://127.0.0.1:$BACKEND_PORT2/" x "$pid" "$dir/stderr.log" 30 || die "backends did not come up"
}

# ---- part a: RPS with limits off / local / redis ------------------------------------------
HOST_A=acme.localhost
declare -A R_RPS R_P50 R_P99 R_CPU R_ERR R_REQ R_RCPU R_EVAL R_LOAD
RPS_WRK_ARGS=(-t1 "-c$CONNS" "-d$DURATION" -H "Host: $HOST_A" --latency)
[[ -n $RPS_DELAY_MS ]] && RPS_WRK_ARGS+=(-s "$OUT/rps-paced.lua")

write_rps_conf() { # NAME(off|local|redis)
    local v=$1 name=rps-$1 rl=""
    mkdir -p "$OUT/$name"
    [[ $v != off ]] && rl="        ratelimit: { requests_per_minute: $HIGH_RPM, burst: 1000000, key: route }
"
    {
        gw_yaml "$name" "$([[ $v == redis ]] && echo 1 || echo 0)" 'runtime: { threads: 1 }
'
        printf '  - id: %s-acme\n    routes:\n      - id: web\n        host: %s\n' "$TAG" "$HOST_A"
        printf '        path_prefix: /\n        algorithm: round_robin\n%s        backends:\n' "$rl"
        backend_lines
    } >"$OUT/$name/tenantry.yaml"
}

# sanity_rps NAME LIMITED(0|1): 4 requests answer 200; RateLimit headers present iff limited
sanity_rps() {
    local name=$1 limited=$2 port=${GW_PORT[$1]} i hdrs code
    for i in 1 2 3 4; do
        show_cmd curl -s -D - -o /dev/null -H "Host: $HOST_A" "http://127.0.0.1:$port/"
        hdrs=$(curl -s -D - -o /dev/null --max-time 5 -H "Host: $HOST_A" "http://127.0.0.1:$port/" | tr -d '\r') || true
        code=$(awk 'NR == 1 {print $2}' <<<"$hdrs")
        [[ $code == 200 ]] || die "$name: request $i answered '$code' (expected 200)"
    done
    if ((limited)); then
        grep -qi '^ratelimit-policy: '"$HIGH_RPM"';' <<<"$hdrs" || fail "$name: no 'RateLimit-Policy: $HIGH_RPM;…' header, the limit is not on"
    else
        ! grep -qi '^ratelimit-' <<<"$hdrs" || fail "$name: RateLimit headers present, limits are not off: $(grep -i '^ratelimit-' <<<"$hdrs" | tr '\n' ' ')"
    fi
    log "$name: sanity ok (200; $(grep -i '^ratelimit-policy' <<<"$hdrs" || echo 'no RateLimit headers'))"
}

# setup_rps VARIANT: starts the gateway, moves the tenant to the unlimited plan, checks it, warms up
declare -A RPS_PID
setup_rps() {
    local v=$1 name=rps-$1 port=${GW_PORT[rps-$1]} redis=0 limited=1
    [[ $v == redis ]] && redis=1
    [[ $v == off ]] && limited=0
    log "=== part a: $name (127.0.0.1:$port) ==="
    write_rps_conf "$v"
    start_gateway "$name" "$PROXY_CPU" "$redis"
    RPS_PID[$v]=$GW_PID
    set_unlimited $((port + 10)) "$TAG-acme"
    sanity_rps "$name" "$limited"
    show_cmd taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$CONNS" "-d$WARMUP" -H "Host: $HOST_A" "http://127.0.0.1:$port/" :: ">/dev/null"
    taskset -c "$LOAD_CPU" "$WRK" -t1 "-c$CONNS" "-d$WARMUP" -H "Host: $HOST_A" "http://127.0.0.1:$port/" >/dev/null
}

# measure_rps VARIANT RUN: one wrk run against the (already running) gateway of VARIANT
declare -A RV_RPS RV_P50 RV_P99 RV_CPU RV_RCPU RV_EV RV_LOAD
measure_rps() {
    local v=$1 r=$2 name=rps-$1 port=${GW_PORT[rps-$1]} pid=${RPS_PID[$1]} f res
    local c0 c1 w0 w1 e0 e1 s0 s1 q0 q1 pb0 pt0 pb1 pt1 lb0 lt0 lb1 lt1
    f=$OUT/$name/wrk-$r.txt
    show_cmd taskset -c "$LOAD_CPU" "$WRK" "${RPS_WRK_ARGS[@]}" "http://127.0.0.1:$port/" :: ">$f"
    e0=$(evalsha_calls)
    s0=$(shared_decisions "$port")
    q0=$(redis_ticks)
    read -r pb0 pt0 <<<"$(cpu_jiffies "$PROXY_CPU")"
    read -r lb0 lt0 <<<"$(cpu_jiffies "$LOAD_CPU")"
    c0=$(tree_cpu_ticks "$pid")
    w0=$(now_ns)
    taskset -c "$LOAD_CPU" "$WRK" "${RPS_WRK_ARGS[@]}" "http://127.0.0.1:$port/" >"$f" 2>&1 ||
        die "wrk failed against $name: $(cat "$f")"
    w1=$(now_ns)
    c1=$(tree_cpu_ticks "$pid")
    read -r pb1 pt1 <<<"$(cpu_jiffies "$PROXY_CPU")"
    read -r lb1 lt1 <<<"$(cpu_jiffies "$LOAD_CPU")"
    q1=$(redis_ticks)
    e1=$(evalsha_calls)
    s1=$(shared_decisions "$port")
    res=$(parse_wrk "$f") || die "could not parse wrk output $f: $(cat "$f")"
    local v_rps v_p50 v_p99 v_reqs v_non v_serr v_cpu v_pct v_core v_load v_rcpu v_ev v_sh
    read -r v_rps v_p50 v_p99 v_reqs v_non v_serr <<<"$res"
    v_cpu=$(calc "($c1 - $c0) / $CLK_TCK * 1000000 / $v_reqs" %.2f)
    v_pct=$(calc "($c1 - $c0) / $CLK_TCK / (($w1 - $w0) / 1e9) * 100" %.1f)
    v_core=$(calc "($pb1 - $pb0) / ($pt1 - $pt0) * 100" %.1f)
    v_load=$(calc "($lb1 - $lb0) / ($lt1 - $lt0) * 100" %.1f)
    v_rcpu=$(calc "($q1 - $q0) / $CLK_TCK * 1000000 / $v_reqs" %.2f)
    v_ev=$(calc "($e1 - $e0) / $v_reqs" %.3f)
    v_sh=$(calc "($s1 - $s0) / $v_reqs" %.3f)
    RV_RPS[$v]+=" $v_rps" RV_P50[$v]+=" $v_p50" RV_P99[$v]+=" $v_p99" RV_CPU[$v]+=" $v_cpu"
    RV_RCPU[$v]+=" $v_rcpu" RV_EV[$v]+=" $v_ev" RV_LOAD[$v]+=" $v_load"
    R_ERR[$v]=$((${R_ERR[$v]:-0} + v_non + v_serr))
    R_REQ[$v]=$((${R_REQ[$v]:-0} + v_reqs))
    log "$name run $r/$RUNS: $v_rps req/s, p50 $v_p50 ms, p99 $v_p99 ms, $v_reqs requests, non-2xx $v_non, socket errors $v_serr;" \
        "gateway cpu ${v_pct}% = $v_cpu us/req (core $PROXY_CPU busy ${v_core}%, core $LOAD_CPU busy ${v_load}%)$([[ $v == redis ]] && echo "; redis-server $v_rcpu us/req, decisions on Redis/request $v_sh, EVALSHA/request $v_ev")"
    check_non2xx "$name run $r" "$v_reqs" "$v_non" "$v_serr"
    if [[ $(calc "$v_core - $v_pct > 10" %d) == 1 ]]; then
        warn "$name run $r: core $PROXY_CPU was ${v_core}% busy but the gateway used only ${v_pct}%: something else ran on it, figures are noisy"
        NOISY=1
    fi
    # Every request's decision must come from Redis (concurrent ones share an EVALSHA).
    if [[ $v == redis ]] && [[ $(calc "$v_sh < 0.99" %d) == 1 ]]; then
        fail "$name run $r: only $v_sh decisions on Redis per request: the limiter did not go to Redis"
    fi
    if [[ $v == redis && -n $REDIS_CLI ]] && [[ $(calc "$e1 - $e0 < 1" %d) == 1 ]]; then
        fail "$name run $r: no EVALSHA reached $REDIS_URL"
    fi
}

# finish_rps VARIANT: checks the gateway's metrics, stops it, takes the medians
finish_rps() {
    local v=$1 name=rps-$1 be
    GW_PID=${RPS_PID[$v]}
    scrape "$name" after
    if [[ $v == redis ]]; then
        be=$(metric_sum "$OUT/$name/metrics-after.txt" '^tenantry_ratelimit_backend_errors_total')
        ((be == 0)) || fail "$name: tenantry_ratelimit_backend_errors_total = $be (decisions fell back to the local limiter)"
    fi
    stop_gw
    # shellcheck disable=SC2086 # word lists
    {
        R_RPS[$v]=$(median ${RV_RPS[$v]})
        R_P50[$v]=$(median ${RV_P50[$v]})
        R_P99[$v]=$(median ${RV_P99[$v]})
        R_CPU[$v]=$(median ${RV_CPU[$v]})
        R_RCPU[$v]=$(median ${RV_RCPU[$v]})
        R_EVAL[$v]=$(median ${RV_EV[$v]})
        R_LOAD[$v]=$(median ${RV_LOAD[$v]})
    }
}

# bench_rps: all gateways run at once (pinned to PROXY_CPU; the idle ones cost nothing), and
# the measured runs are interleaved, the order rotating every round, so that the VM's drift
# over minutes hits every variant alike
bench_rps() {
    local -a vs
    read -r -a vs <<<"$VARIANTS"
    local n=${#vs[@]} r i v
    for v in "${vs[@]}"; do setup_rps "$v"; done
    for ((r = 1; r <= RUNS; r++)); do
        for ((i = 0; i < n; i++)); do
            v=${vs[(i + r - 1) % n]}
            measure_rps "$v" "$r"
        done
    done
    for v in "${vs[@]}"; do finish_rps "$v"; done
}

# ---- part b: noisy neighbour ------------------------------------------------------------
HOST_NOISY=noisy.localhost
HOST_QUIET=quiet.localhost
declare -A N_RPS N_P50 N_P99 N_P99R N_OK N_ARPS N_A429 N_AOK

write_nn_conf() { # MODE
    local name=nn-$1
    mkdir -p "$OUT/$name"
    {
        gw_yaml "$name" "$([[ $1 == redis ]] && echo 1 || echo 0)" ''
        printf '  - id: %s-noisy\n    routes:\n      - id: web\n        host: %s\n        path_prefix: /\n' "$TAG" "$HOST_NOISY"
        printf '        ratelimit: { requests_per_minute: %s, burst: %s, key: route }\n        backends:\n' "$A_RPM" "$A_BURST"
        backend_lines
        printf '  - id: %s-quiet\n    routes:\n      - id: web\n        host: %s\n        path_prefix: /\n' "$TAG" "$HOST_QUIET"
        printf '        ratelimit: { requests_per_minute: %s, key: route }\n        backends:\n' "$B_RPM"
        backend_lines
    } >"$OUT/$name/tenantry.yaml"
}

# nn_measure MODE PHASE(alone|paced|flood) ROUND: B's steady run, alone or while A is flooded
# (A's wrk starts 1 s before B's and ends 1 s after it)
declare -A NL_RPS NL_P50 NL_P99 NL_REQ NL_BAD NL_ARPS NL_AREQ NL_ANON NL_AOK
nn_measure() {
    local mode=$1 phase=$2 round=$3 name=nn-$1 port=${GW_PORT[nn-$1]} secs fpid="" ff fb res
    local -a bcmd acmd
    secs=$(dur_to_secs "$NN_DURATION")
    fb=$OUT/$name/wrk-b-$phase-$round.txt
    ff=$OUT/$name/wrk-a-$phase-$round.txt
    bcmd=("$WRK" -t1 "-c$STEADY_CONNS" "-d$NN_DURATION" -s "$OUT/steady.lua" -H "Host: $HOST_QUIET" --latency "http://127.0.0.1:$port/")
    if [[ $phase != alone ]]; then
        acmd=("$WRK" -t1 "-c$FLOOD_CONNS" "-d$((secs + 2))s" -H "Host: $HOST_NOISY" --latency)
        [[ $phase == paced ]] && acmd+=(-s "$OUT/paced.lua")
        acmd+=("http://127.0.0.1:$port/")
        show_cmd "${acmd[@]}" :: ">$ff &"
        "${acmd[@]}" >"$ff" 2>&1 &
        fpid=$!
        BG_PIDS+=("$fpid")
        sleep 1
    fi
    show_cmd "${bcmd[@]}" :: ">$fb"
    "${bcmd[@]}" >"$fb" 2>&1 || die "wrk (B) failed: $(cat "$fb")"
    if [[ -n $fpid ]]; then
        wait "$fpid" || die "wrk (A flood) failed: $(cat "$ff")"
        forget_pid "$fpid"
    fi
    local v_rps v_p50 v_p99 v_reqs v_non v_serr k=$mode-$phase
    res=$(parse_wrk "$fb") || die "could not parse $fb"
    read -r v_rps v_p50 v_p99 v_reqs v_non v_serr <<<"$res"
    NL_RPS[$k]+=" $v_rps" NL_P50[$k]+=" $v_p50" NL_P99[$k]+=" $v_p99"
    NL_REQ[$k]=$((${NL_REQ[$k]:-0} + v_reqs))
    NL_BAD[$k]=$((${NL_BAD[$k]:-0} + v_non + v_serr))
    ((v_non + v_serr == 0)) || fail "$name $phase round $round: B got $v_non non-2xx and $v_serr socket errors of $v_reqs requests (target: 100% success)"
    local msg="$name $phase round $round: B $v_rps req/s, p50 $v_p50 ms, p99 $v_p99 ms, $v_reqs requests, non-2xx $v_non, socket errors $v_serr"
    if [[ -n $fpid ]]; then
        res=$(parse_wrk "$ff") || die "could not parse $ff"
        read -r v_rps v_p50 v_p99 v_reqs v_non v_serr <<<"$res"
        NL_ARPS[$k]+=" $v_rps"
        NL_AREQ[$k]=$((${NL_AREQ[$k]:-0} + v_reqs))
        NL_ANON[$k]=$((${NL_ANON[$k]:-0} + v_non))
        # A's answered-2xx per second over its whole run (the initial burst included)
        NL_AOK[$k]+=" $(calc "($v_reqs - $v_non - $v_serr) / ($secs + 2)" %.1f)"
        msg+="; A $v_rps req/s ($(calc "$v_rps * 60 / $A_RPM" %.0f)x its limit), $v_non of $v_reqs non-2xx, $(calc "($v_reqs - $v_non - $v_serr) / ($secs + 2)" %.1f) 2xx/s, socket errors $v_serr"
        if [[ $(calc "$v_rps * 60 / $A_RPM < 20" %d) == 1 ]]; then
            warn "$name $phase round $round: A's flood reached only $(calc "$v_rps * 60 / $A_RPM" %.1f)x its limit (wanted >= 20x)"
        fi
    fi
    log "$msg"
}

# nn_summary MODE PHASE: medians over the rounds into N_*
nn_summary() {
    local k=$1-$2
    # shellcheck disable=SC2086 # word lists
    {
        N_RPS[$k]=$(median ${NL_RPS[$k]})
        N_P50[$k]=$(median ${NL_P50[$k]})
        N_P99[$k]=$(median ${NL_P99[$k]})
        N_P99R[$k]="$(printf '%s\n' ${NL_P99[$k]} | sort -g | head -n1)-$(printf '%s\n' ${NL_P99[$k]} | sort -g | tail -n1)"
    }
    N_OK[$k]=$(calc "(${NL_REQ[$k]} - ${NL_BAD[$k]}) * 100 / ${NL_REQ[$k]}" %.3f)
    if [[ $2 != alone ]]; then
        # shellcheck disable=SC2086
        N_ARPS[$k]=$(median ${NL_ARPS[$k]})
        N_A429[$k]=$(calc "${NL_ANON[$k]} * 100 / ${NL_AREQ[$k]}" %.1f)
        # shellcheck disable=SC2086
        N_AOK[$k]=$(median ${NL_AOK[$k]})
    fi
}

bench_nn() {
    local mode=$1 name=nn-$1 port=${GW_PORT[nn-$1]} redis=0 code
    [[ $mode == redis ]] && redis=1
    log "=== part b: noisy neighbour, $mode limiter (127.0.0.1:$port) ==="
    write_nn_conf "$mode"
    start_gateway "$name" "" "$redis"
    set_unlimited $((port + 10)) "$TAG-noisy" "$TAG-quiet"
    for h in "$HOST_QUIET" "$HOST_NOISY"; do
        show_cmd curl -s -o /dev/null -w '%{http_code}' -H "Host: $h" "http://127.0.0.1:$port/"
        code=$(curl_code "http://127.0.0.1:$port/" "$h")
        [[ $code == 200 ]] || die "$name: $h answered '$code' (expected 200)"
    done
    # A's limit really refuses: 2 x burst requests in a row must see 429s
    show_cmd "$WRK" -t1 -c4 -d1s -H "Host: $HOST_NOISY" "http://127.0.0.1:$port/" :: ">$OUT/$name/wrk-a-probe.txt"
    "$WRK" -t1 -c4 -d1s -H "Host: $HOST_NOISY" "http://127.0.0.1:$port/" >"$OUT/$name/wrk-a-probe.txt" 2>&1
    grep -q 'Non-2xx or 3xx responses' "$OUT/$name/wrk-a-probe.txt" || fail "$name: A's limit refused nothing in a 1 s burst"
    show_cmd curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_NOISY" "http://127.0.0.1:$port/"
    log "$name: sanity ok (A after its burst: $(curl_code "http://127.0.0.1:$port/" "$HOST_NOISY"), $(grep -o 'Non-2xx.*' "$OUT/$name/wrk-a-probe.txt"))"
    # warm-up of B's path (A's bucket refills meanwhile)
    show_cmd "$WRK" -t1 "-c$STEADY_CONNS" -d2s -s "$OUT/steady.lua" -H "Host: $HOST_QUIET" "http://127.0.0.1:$port/" :: ">/dev/null"
    "$WRK" -t1 "-c$STEADY_CONNS" -d2s -s "$OUT/steady.lua" -H "Host: $HOST_QUIET" "http://127.0.0.1:$port/" >/dev/null
    local r ph
    for ((r = 1; r <= NN_ROUNDS; r++)); do
        for ph in alone paced flood; do
            nn_measure "$mode" "$ph" "$r"
        done
    done
    for ph in alone paced flood; do nn_summary "$mode" "$ph"; done
    scrape "$name" after
    local refused be bad
    refused=$(metric_sum "$OUT/$name/metrics-after.txt" "^tenantry_admission_refused_total.*$TAG-quiet")
    ((refused == 0)) || fail "$name: the gateway refused $refused of B's requests at admission"
    bad=$(metric_sum "$OUT/$name/metrics-after.txt" "^tenantry_requests_total[{]tenant=\"$TAG-quiet\".*status_class=\"[345]xx\"")
    ((bad == 0)) || fail "$name: the gateway answered $bad of B's requests with a non-2xx status (tenantry_requests_total)"
    if ((redis)); then
        be=$(metric_sum "$OUT/$name/metrics-after.txt" '^tenantry_ratelimit_backend_errors_total')
        ((be == 0)) || fail "$name: tenantry_ratelimit_backend_errors_total = $be (decisions fell back to the local limiter)"
    fi
    stop_gw
}

# ---- run --------------------------------------------------------------------------------
cat >"$OUT/steady.lua" <<EOF
-- B's steady traffic: every connection waits ${STEADY_DELAY_MS} ms after each response
function delay() return $STEADY_DELAY_MS end
EOF
cat >"$OUT/rps-paced.lua" <<EOF
-- part a at a fixed offered load: every connection waits ${RPS_DELAY_MS:-0} ms after each response
function delay() return ${RPS_DELAY_MS:-0} end
EOF
cat >"$OUT/paced.lua" <<EOF
-- A's paced flood: every connection waits ${PACED_DELAY_MS} ms after each response
function delay() return $PACED_DELAY_MS end
EOF

if want rps || want noisy; then
    preflight "$LOAD_CPU" "$PROXY_CPU"
    start_backends
fi
if want rps; then
    bench_rps
fi
if want noisy; then
    for m in $MODES; do bench_nn "$m"; done
fi
LIMITER_OUT=$OUT/limiter.txt
LIMITER_OK=0
if want limiter; then
    cleanup_bg # nothing of ours runs while cargo builds and the micro-benchmark runs
    log "=== part c: bench/limiter.sh ==="
    # shellcheck disable=SC2086 # LIMITER_ARGS is a word list
    show_cmd bash "$BENCH_DIR/limiter.sh" --redis "$REDIS_URL" $LIMITER_ARGS :: ">$LIMITER_OUT 2>&1"
    # shellcheck disable=SC2086
    if bash "$BENCH_DIR/limiter.sh" --redis "$REDIS_URL" $LIMITER_ARGS >"$LIMITER_OUT" 2>&1; then
        LIMITER_OK=1
    else
        warn "bench/limiter.sh failed (a half-done edit in tenantry-limits?): $(tail -n 5 "$LIMITER_OUT")"
    fi
fi

# ---- report -----------------------------------------------------------------------------
echo
if want rps; then
    echo "== a. gateway RPS, limits off vs on: medians of $RUNS run(s), wrk -t1 -c$CONNS -d$DURATION, gateway (runtime.threads 1) on core $PROXY_CPU, backends+wrk on core $LOAD_CPU =="
    fmt='%-8s %9s %8s %8s %11s %12s %10s %14s %8s %8s %11s\n'
    # shellcheck disable=SC2059
    printf "$fmt" limits rps "p50 ms" "p99 ms" "cpu us/req" "redis us/req" "load core" "non-2xx/reqs" "rps/off" "p99/off" "p99-off ms"
    for v in $VARIANTS; do
        # shellcheck disable=SC2059
        printf "$fmt" "$v" "$(calc "${R_RPS[$v]}" %.0f)" "$(calc "${R_P50[$v]}" %.3f)" "$(calc "${R_P99[$v]}" %.3f)" \
            "$(calc "${R_CPU[$v]}" %.2f)" "$([[ $v == redis ]] && calc "${R_RCPU[$v]}" %.2f || echo -)" \
            "$(calc "${R_LOAD[$v]}" %.1f)%" "${R_ERR[$v]}/${R_REQ[$v]}" "$(calc "${R_RPS[$v]} / ${R_RPS[off]}" %.3f)" \
            "$(calc "${R_P99[$v]} / ${R_P99[off]}" %.3f)" "$(calc "${R_P99[$v]} - ${R_P99[off]}" %+.3f)"
    done
    echo "off: tenant on plan 'unlimited' (all limits null), no route ratelimit; local: + route ratelimit"
    echo "{requests_per_minute: $HIGH_RPM, burst: 1000000, key: route} (never refuses); redis: same + --redis $REDIS_URL"
    echo "(EVALSHA per request, median: ${R_EVAL[redis]:-n/a}; concurrent decisions share one). non-2xx = non-2xx + socket errors / requests over all runs."
    echo "cpu us/req: the gateway's utime+stime per request; redis us/req: redis-server's (not pinned, it mostly"
    echo "lands on the load core); load core: busy share of core $LOAD_CPU (wrk + backends + whatever else ran there)."
    echo "The gateways run side by side and the runs are interleaved (order rotating), see the '+' lines."
    echo
fi
if want noisy; then
    echo "== b. noisy neighbour: B steady (wrk -t1 -c$STEADY_CONNS, ${STEADY_DELAY_MS} ms between requests per connection), A limited to $A_RPM/min burst $A_BURST =="
    fmt='%-6s %-20s %7s %7s %7s %12s %9s %8s %7s %9s %7s %7s\n'
    # shellcheck disable=SC2059
    printf "$fmt" mode "A's traffic" "B rps" "B p50" "B p99" "B p99 range" "B 2xx %" "p99 chg" "A rps" "A x limit" "A 429%" "A 2xx/s"
    for m in $MODES; do
        for ph in alone paced flood; do
            k=$m-$ph
            case $ph in
            alone) what="none" ;;
            paced) what="paced -c$FLOOD_CONNS ${PACED_DELAY_MS}ms" ;;
            flood) what="full speed -c$FLOOD_CONNS" ;;
            esac
            ar=- ax=- a4=- aok=-
            if [[ $ph == alone ]]; then
                chg=-
            else
                chg=$(calc "(${N_P99[$k]} - ${N_P99[$m-alone]}) * 100 / ${N_P99[$m-alone]}" %+.1f)%
            fi
            if [[ $ph == paced || $ph == flood ]]; then
                ar=$(calc "${N_ARPS[$k]}" %.0f)
                ax=$(calc "${N_ARPS[$k]} * 60 / $A_RPM" %.0f)x
                a4=${N_A429[$k]}
                aok=$(calc "${N_AOK[$k]}" %.0f)
            fi
            # shellcheck disable=SC2059
            printf "$fmt" "$m" "$what" "$(calc "${N_RPS[$k]}" %.0f)" "$(calc "${N_P50[$k]}" %.2f)" "$(calc "${N_P99[$k]}" %.2f)" \
                "${N_P99R[$k]}" "$(calc "${N_OK[$k]}" %.2f)" "$chg" "$ar" "$ax" "$a4" "$aok"
        done
    done
    echo "Medians over $NN_ROUNDS rounds of (alone, paced, full speed), $NN_DURATION each; latencies in ms; 'B p99 range' = min-max"
    echo "over the rounds (the noise floor). Gateway with default threads ($NCPU), not pinned; backends on core $LOAD_CPU; wrk not pinned."
    echo "p99 chg: median p99 vs B alone. A x limit: A's offered rate / its limit ($A_RPM/min); A 429%: A's non-2xx"
    echo "share (429 rate_limited); A 2xx/s: what A got through, per second of its run (initial burst of $A_BURST included)."
    echo "Targets: B's p99 moves < 10% with A flooding, B's success 100%."
    echo
fi
if want limiter; then
    echo "== c. bench/limiter.sh (limiter decision alone) =="
    if ((LIMITER_OK)); then
        grep -E '^(local|redis)' "$LIMITER_OUT" || tail -n 5 "$LIMITER_OUT"
    else
        echo "failed, see $LIMITER_OUT"
    fi
    echo
fi
if want rps || want noisy; then
    if want rps && want noisy && [[ " $MODES " == *" local "* && " $MODES " == *" redis "* &&
        " $VARIANTS " == *" local "* && " $VARIANTS " == *" redis "* ]]; then
        echo "== targets =="
        echo "Redis path adds <= 0.3 ms p99: at a steady ~$(calc "${N_RPS[local-alone]}" %.0f) req/s (B alone): $(calc "${N_P99[redis-alone]} - ${N_P99[local-alone]}" %+.3f) ms" \
            "(redis ${N_P99[redis-alone]} vs local ${N_P99[local-alone]});" \
            "saturated (part a, -c$CONNS): $(calc "${R_P99[redis]} - ${R_P99[local]}" %+.3f) ms vs local, $(calc "${R_P99[redis]} - ${R_P99[off]}" %+.3f) ms vs off"
        echo "RPS ratio limits on/off: local $(calc "${R_RPS[local]} / ${R_RPS[off]}" %.3f), redis $(calc "${R_RPS[redis]} / ${R_RPS[off]}" %.3f)"
        for ph in paced flood; do
            echo "Noisy neighbour, A $([[ $ph == paced ]] && echo "paced (~$(calc "${N_ARPS[local-paced]} * 60 / $A_RPM" %.0f)x its limit)" || echo "at full speed"):" \
                "B p99 change local $(calc "(${N_P99[local-$ph]} - ${N_P99[local-alone]}) * 100 / ${N_P99[local-alone]}" %+.1f)%," \
                "redis $(calc "(${N_P99[redis-$ph]} - ${N_P99[redis-alone]}) * 100 / ${N_P99[redis-alone]}" %+.1f)%" \
                "(B alone p99 range: local ${N_P99R[local-alone]} ms, redis ${N_P99R[redis-alone]} ms);" \
                "B success local ${N_OK[local-$ph]}%, redis ${N_OK[redis-$ph]}%"
        done
        echo
    fi
    echo "Commands: every line starting with '+' above is a command this script ran, as run."
    echo "Configs, stderr logs, metrics and raw wrk output: $OUT"
fi
log "total time $(($(date +%s) - T_START)) s"
((NOISY)) && echo "WARNING: other load was seen on the benchmark cores (see warnings above); rerun on an idle machine."
if ((${#FAILED[@]})); then
    echo "CHECKS FAILED:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all checks passed"
