# shellcheck shell=bash
# Shared helpers for the bench/*.sh scripts. Sourced, never executed on its own.
# Everything here only ever talks to 127.0.0.1.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

# Prints a command the way it could be pasted into a shell, prefixed with "+ ".
# Extra words after "::" are appended verbatim (redirections, "&").
show_cmd() {
    local out="" arg
    while (($#)); do
        if [[ $1 == :: ]]; then
            shift
            out+=" $*"
            break
        fi
        arg=$1
        if [[ ! $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            arg="'${arg//\'/\'\\\'\'}'"
        fi
        out+=" $arg"
        shift
    done
    printf '+%s\n' "$out"
}

now_ns() { date +%s%N; }

# Converts a wrk/curl style duration ("10s", "2m", "500ms", "3") to whole seconds (min 1).
dur_to_secs() {
    awk -v d="$1" 'BEGIN {
        n = d; sub(/[a-z]+$/, "", n); u = d; sub(/^[0-9.]+/, "", u)
        if (u == "ms") n = n / 1000; else if (u == "m") n = n * 60; else if (u == "h") n = n * 3600
        n = int(n + 0.999); if (n < 1) n = 1; print n }'
}

# Finds an executable: $2 (explicit override) if set, else PATH, else the usual sbin dirs.
find_bin() {
    local name=$1 override=${2:-} d
    if [[ -n $override ]]; then
        [[ -x $override ]] || die "$override is not executable"
        printf '%s\n' "$override"
        return 0
    fi
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for d in /usr/sbin /usr/local/sbin /sbin /usr/local/bin /usr/local/nginx/sbin; do
        if [[ -x $d/$name ]]; then
            printf '%s\n' "$d/$name"
            return 0
        fi
    done
    return 1
}

# ---- background processes -------------------------------------------------------------

BG_PIDS=()
SPAWNED_PID=

# start_bg STDOUT STDERR CMD... : runs CMD in the background, records its pid in
# SPAWNED_PID (must not be called inside $(...)) and prints the command.
start_bg() {
    local out=$1 err=$2
    shift 2
    show_cmd "$@" :: ">$out 2>$err &"
    "$@" >"$out" 2>"$err" &
    SPAWNED_PID=$!
    BG_PIDS+=("$SPAWNED_PID")
}

# Prints PID and all its descendants, one per line.
tree_pids() {
    local c
    [[ -d /proc/$1 ]] || return 0
    printf '%s\n' "$1"
    for c in $(pgrep -P "$1" 2>/dev/null || true); do
        tree_pids "$c"
    done
}

# Sum of utime+stime (clock ticks) of PID and all its descendants (every thread included:
# /proc/PID/stat holds thread-group totals).
tree_cpu_ticks() {
    local total=0 p s rest
    local -a f
    for p in $(tree_pids "$1"); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${s##*) } # drop "pid (comm) ", comm may hold spaces
        read -r -a f <<<"$rest"
        # rest starts at field 3 (state): utime is field 14 -> f[11], stime 15 -> f[12]
        total=$((total + f[11] + f[12]))
    done
    printf '%s\n' "$total"
}

# "busy total" jiffies of one cpu line of /proc/stat (busy excludes idle and iowait).
cpu_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# fail MESSAGE: records a failed check (scripts print FAILED at the end and exit 1).
FAILED=()
fail() {
    warn "CHECK FAILED: $*"
    FAILED+=("$*")
}

# "busy total" jiffies summed over the given cpus.
jiffies_sum() {
    local c b t sb=0 st=0
    for c in "$@"; do
        read -r b t <<<"$(cpu_jiffies "$c")"
        sb=$((sb + b)) st=$((st + t))
    done
    echo "$sb $st"
}

# preflight LOAD_CPU PROXY_CPU...: logs how busy the proxy core(s) and the load core were over
# one second; above 15% it warns and sets NOISY=1 (the figures will be noisy).
preflight() {
    local load=$1 a0 t0 a1 t1 b0 u0 b1 u1 x y
    shift
    read -r a0 t0 <<<"$(jiffies_sum "$@")"
    read -r b0 u0 <<<"$(cpu_jiffies "$load")"
    sleep 1
    read -r a1 t1 <<<"$(jiffies_sum "$@")"
    read -r b1 u1 <<<"$(cpu_jiffies "$load")"
    x=$(calc "($a1 - $a0) / ($t1 - $t0) * 100" %.0f)
    y=$(calc "($b1 - $b0) / ($u1 - $u0) * 100" %.0f)
    log "pre-flight: proxy core(s) $* ${x}% busy, load core $load ${y}% busy over 1 s"
    if ((x > 15 || y > 15)); then
        warn "the machine is not idle (proxy cores ${x}%, load core ${y}% busy): figures will be noisy"
        NOISY=1
    fi
}

# parse_wrk FILE -> "rps p50_ms p99_ms requests non2xx socket_errors" (of `wrk --latency`)
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000; if (u == "s") return n * 1000
        if (u == "m") return n * 60000; return n + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non2xx += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i += 2) { v = $(i + 1); sub(/,/, "", v); serr += v } }
    END {
        if (rps == "" || p99 == "" || reqs == "") exit 1
        printf "%s %.3f %.3f %s %d %d\n", rps, p50, p99, reqs, non2xx, serr
    }' "$1"
}

# Stops PID and its descendants: SIGTERM, up to 5 s grace, then SIGKILL.
stop_pid() {
    local pid=$1 p i
    local -a all
    mapfile -t all < <(tree_pids "$pid")
    ((${#all[@]})) || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for p in "${all[@]}"; do
            if kill -0 "$p" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then
                alive=1
            fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${all[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}

cleanup_bg() {
    local i
    for ((i = ${#BG_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BG_PIDS[i]}"
    done
    BG_PIDS=()
}

# ---- ports and HTTP -------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_port() {
    local p
    for p in "$@"; do
        if port_in_use "$p"; then
            die "127.0.0.1:$p is already in use; stop whatever listens there or change the port knobs"
        fi
    done
    return 0
}

# wait_http URL HOST PID ERRLOG [TIMEOUT_S]: polls until URL answers any HTTP status.
wait_http() {
    local url=$1 host=$2 pid=$3 errlog=$4 timeout=${5:-30} code deadline
    deadline=$(($(date +%s) + timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            warn "process $pid exited before $url answered; last lines of $errlog:"
            tail -n 20 "$errlog" >&2 || true
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Host: $host" "$url" 2>/dev/null || true)
        [[ -n $code && $code != 000 ]] && return 0
        if (($(date +%s) >= deadline)); then
            warn "$url did not answer within ${timeout}s; last lines of $errlog:"
            tail -n 20 "$errlog" >&2 || true
            return 1
        fi
        sleep 0.05
    done
}

# ---- numbers --------------------------------------------------------------------------

# median of the arguments (mean of the two middle values for an even count)
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# calc EXPR [FORMAT]: floating point arithmetic via awk ("nan" if it divides by zero)
calc() {
    awk -v fmt="${2:-%.2f}" "BEGIN { x = ($1); printf fmt \"\\n\", x }" 2>/dev/null || echo nan
}

# ---- tenantry binary ------------------------------------------------------------------

# ensure_tenantry: builds target/release/tenantry if it is missing and TENANTRY_BIN was not
# given explicitly.
ensure_tenantry() {
    local default_bin=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/tenantry
    if [[ -z ${TENANTRY_BIN:-} ]]; then
        TENANTRY_BIN=$default_bin
        if [[ ! -x $TENANTRY_BIN ]]; then
            log "tenantry binary missing, building it"
            show_cmd cargo build --release -p tenantry
            (cd "$REPO_ROOT" && cargo build --release -p tenantry)
        fi
    fi
    [[ -x $TENANTRY_BIN ]] || die "TENANTRY_BIN=$TENANTRY_BIN is not an executable"
    TENANTRY_BIN=$(cd "$(dirname "$TENANTRY_BIN")" && pwd)/$(basename "$TENANTRY_BIN")
    log "tenantry: $TENANTRY_BIN (built $(date -r "$TENANTRY_BIN" '+%F %T'), repo at $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty'))"
}

# nginx directives pointing every temp path into DIR (only for modules compiled in).
nginx_temp_paths() {
    local dir=$1 nginx=$2 v m
    v=$("$nginx" -V 2>&1)
    printf '    client_body_temp_path %s/client_body;\n' "$dir"
    for m in proxy fastcgi uwsgi scgi; do
        [[ $v == *"--without-http_${m}_module"* ]] && continue
        printf '    %s_temp_path %s/%s;\n' "$m" "$dir" "$m"
    done
}

# nginx_main_conf DIR [WORKERS]: the top of every nginx config here (WORKERS workers, default 1;
# its own pid and log in DIR)
nginx_main_conf() {
    cat <<CONF
worker_processes ${2:-1};
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 10000;
events { worker_connections 4096; }
CONF
}

# backend_pair_conf DIR NGINX PORT1 PORT2 [EXTRA]: the backend nginx of proxy-vs-nginx.sh and
# proxy-instructions.sh: one worker, PORT1 answering 200 "b1\n" and PORT2 200 "b2\n", with
# EXTRA (more directives) inside PORT1's server block.
backend_pair_conf() {
    cat <<EOF
# backends: one nginx worker, two server blocks with a fixed tiny body
$(nginx_main_conf "$1")
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$1" "$2")
    server {
        listen 127.0.0.1:$3 backlog=4096;
        location / { return 200 "b1\n"; }
${5:-}
    }
    server { listen 127.0.0.1:$4 backlog=4096; location / { return 200 "b2\n"; } }
}
EOF
}

# acme_tenant_yaml HOST PORT1 PORT2 [ROUTE_LINES]: the benchmarks' tenant `acme`, one route for
# HOST, round robin over the two backends, plus ROUTE_LINES (more keys of the route, indented
# by 8) (no plan key: scripts move it to "unlimited", see set_unlimited)
acme_tenant_yaml() {
    cat <<EOF
tenants:
  - id: acme
    routes:
      - id: web
        host: $1
        path_prefix: /
        algorithm: round_robin${4:+
$4}
        backends:
          - { address: 127.0.0.1:$2 }
          - { address: 127.0.0.1:$3 }
EOF
}

# nginx_cmd PREFIX_DIR CONF: the command line that runs nginx in the foreground.
NGINX_CMD=()
nginx_cmd() {
    local nginx=$1 prefix=$2 conf=$3
    NGINX_CMD=("$nginx" -p "$prefix/" -c "$conf")
    # -e (1.19.5+) keeps nginx from touching the compiled-in error log before reading conf
    if [[ $("$nginx" -h 2>&1) == *"-e filename"* ]]; then
        NGINX_CMD+=(-e "$prefix/error.log")
    fi
}

# ---- the gateway's admin API (benchmarks run tenants on an "unlimited" plan) -----------------
# Throw-away credentials: each benchmark gateway has a fresh store, admin on 127.0.0.1 only.
# Pass them as TENANTRY_ADMIN_EMAIL / TENANTRY_ADMIN_PASSWORD when starting tenantry.
ADMIN_EMAIL=admin@bench.test
ADMIN_PASSWORD=bench-only-password
UNLIMITED_LIMITS='{"max_users":null,"max_routes":null,"max_backends_per_route":null,"max_domains":null,"max_workers":null,"requests_per_minute":null,"burst":null,"tokens_per_minute":null,"bandwidth_gb_month":null,"waf_level":"off","dedicated_allowed":false,"on_quota":"log"}'

# api METHOD ADMIN_PORT PATH BODY WANT_CODE [TOKEN]: the body goes to API_BODY; dies on another status
API_BODY=
api() {
    local method=$1 port=$2 path=$3 body=$4 want=$5 token=${6:-} resp code
    local -a auth=()
    if [[ -n $token ]]; then
        auth=(-H "Authorization: Bearer $token")
        # shellcheck disable=SC2016 # printed as is: the token is not shown
        show_cmd curl -s -X "$method" -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port$path"
    else
        show_cmd curl -s -X "$method" -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port$path"
    fi
    resp=$(curl -s -w '|%{http_code}' --max-time 10 -X "$method" "${auth[@]}" -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:$port$path") || resp="|000"
    code=${resp##*|}
    API_BODY=${resp%|*}
    [[ $code == "$want" ]] || die "$method $path answered $code, expected $want: $API_BODY"
}

# set_unlimited ADMIN_PORT TENANT...: creates plan "unlimited" (every limit null; its waf_level
# "off" does not matter, a tenant's own waf level wins) and moves the tenants to it (file tenants
# without a `plan:` key keep it; the change applies at once)
set_unlimited() {
    local port=$1 token t
    shift
    api POST "$port" /api/auth/login "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" 200
    token=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$API_BODY")
    [[ -n $token ]] || die "login answered no access_token: $API_BODY"
    api POST "$port" /api/plans "{\"name\":\"unlimited\",\"limits\":$UNLIMITED_LIMITS}" 201 "$token"
    for t in "$@"; do
        api PUT "$port" "/api/tenants/$t/subscription" '{"plan":"unlimited"}' 200 "$token"
        [[ $API_BODY == *'"plan":"unlimited"'* ]] || die "subscription of $t not changed: $API_BODY"
    done
}
