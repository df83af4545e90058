#!/usr/bin/env bash
# Runs the benchmark suite. See README.md.
#
#   bench/run.sh                 # every scenario, every server
#   bench/run.sh S1 S3           # some scenarios
#   QUICK=1 bench/run.sh         # smoke run: 1 repetition, 3 s durations
#   SERVERS="ours hyper_tokio" bench/run.sh S2
#   PIN=1 bench/run.sh S1        # servers on CPU 0, load tools on CPU 1
#   SERVERS="ours_ws tungstenite_blocking tokio_tungstenite" bench/run.sh S14 S15
#   bench/run.sh S16             # instructions per request under callgrind
#
# Environment: QUICK, REPS, DUR (seconds), SERVERS, PIN, PIN_SERVER_CPUS,
# PIN_LOAD_CPUS, S3_CONNS, S4_N, S6_SECS, S6_REPS, UPLOAD_SIZE (for S5's big
# upload, a `head -c` size), S13_CLIENTS, S15_CONNS, S16_N, LOGDIR.
#
# Every step is bounded with `timeout`; a server that fails or hangs gets
# "failed: why" in its cell and the run goes on.

set -u -o pipefail
# $EPOCHREALTIME, awk and the tools' outputs with a decimal point.
export LC_NUMERIC=C

HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}
    DUR=${DUR:-3}
    S4_N=${S4_N:-50000}
    S6_SECS=${S6_SECS:-15}
    S16_N=${S16_N:-4000}
else
    REPS=${REPS:-3}
    DUR=${DUR:-10}
    S4_N=${S4_N:-200000}
    S6_SECS=${S6_SECS:-60}
    S16_N=${S16_N:-10000}
fi
S3_CONNS=${S3_CONNS:-5000}
S6_REPS=${S6_REPS:-$REPS}
UPLOAD_SIZE=${UPLOAD_SIZE:-1G}
S13_CLIENTS=${S13_CLIENTS:-4}
S15_CONNS=${S15_CONNS:-10000}
SERVERS=${SERVERS:-"ours hyper_tokio hyper_tokio_64k hyper_blocking astra04 tiny_http limit ours_tls hyper_tokio_tls ours_ws tungstenite_blocking tokio_tungstenite"}
SCENARIOS=${*:-"S1 S2 S3 S4 S5 S6 S7 S8 S9 S10 S11 S12 S13 S14 S15 S16"}
REFERENCE=hyper_tokio
# The TLS scenarios' reference: hyper_tokio behind tokio-rustls.
TLS_REFERENCE=hyper_tokio_tls
# The WebSocket scenarios' reference: tokio-tungstenite's echo server.
WS_REFERENCE=tokio_tungstenite
# The peer for blocking handlers: hyper + spawn_blocking. S2 and S8 report
# ratios to it too.
BLOCKING_PEER=hyper_blocking

# Pinned mode: every server runs under `taskset -c $PIN_SERVER_CPUS`, every load
# tool (and this script) under `taskset -c $PIN_LOAD_CPUS`, so that neither
# takes the other's core and ratios are per core. Shared mode (the default):
# no pinning, all of them share all cores.
PIN=${PIN:-0}
PIN_SERVER_CPUS=${PIN_SERVER_CPUS:-0}
PIN_LOAD_CPUS=${PIN_LOAD_CPUS:-1}
SRV=()  # prefix for servers
LOAD=() # prefix for load tools
if [ "$PIN" = 1 ]; then
    if ! command -v taskset >/dev/null; then
        echo "PIN=1 needs taskset (util-linux)" >&2
        exit 1
    fi
    for cpus in "$PIN_SERVER_CPUS" "$PIN_LOAD_CPUS"; do
        if ! taskset -c "$cpus" true 2>/dev/null; then
            echo "PIN=1: cannot run on CPU(s) $cpus (this machine has $(nproc))" >&2
            exit 1
        fi
    done
    SRV=(taskset -c "$PIN_SERVER_CPUS")
    LOAD=(taskset -c "$PIN_LOAD_CPUS")
fi

declare -A PORT=(
    [ours]=18081 [hyper_tokio]=18082 [hyper_blocking]=18083
    [astra04]=18084 [tiny_http]=18085 [limit]=18086 [hyper_tokio_64k]=18087
    [ours_tls]=18091 [hyper_tokio_tls]=18092
    [ours_ws]=18100 [tungstenite_blocking]=18101 [tokio_tungstenite]=18102
)
# The servers that speak only TLS, and the scenarios made for them: these
# servers take part in these scenarios and no other, the others in every other.
declare -A TLS_SERVER=([ours_tls]=1 [hyper_tokio_tls]=1)
declare -A TLS_SCENARIO=([S11]=1 [S12]=1 [S13]=1)
# Likewise the WebSocket echo servers (their `/` is a WebSocket, which the
# peers answer nothing else on) and the scenarios made for them.
declare -A WS_SERVER=([ours_ws]=1 [tungstenite_blocking]=1 [tokio_tungstenite]=1)
declare -A WS_SCENARIO=([S14]=1 [S15]=1)
# Servers without HTTP/2.
declare -A NO_H2=([tiny_http]=1 [limit]=1)
# `limit` answers every request with the same 13 bytes and is only meaningful
# where that is the request: S1 and S10 (hello), and S3 (idle connections).
declare -A LIMIT_SCENARIOS=([S1]=1 [S3]=1 [S10]=1)
# S16 (callgrind) compares ours with the reference only: each server costs it
# about a minute per repetition, and the question it answers is that ratio.
declare -A CALLGRIND_SERVER=([ours]=1 [hyper_tokio]=1)

# Counted before the driver pins itself (PIN=1), after which nproc says 1.
CORES=$(nproc)
BIN="$HERE/target/release"
# A self-signed certificate made by this script (make_cert), for the TLS
# servers; they read its paths from the environment.
TLS_DIR="$HERE/target/tls"
export BENCH_TLS_CERT="$TLS_DIR/cert.pem" BENCH_TLS_KEY="$TLS_DIR/key.pem"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
STARTED=$(date -u "+%Y-%m-%d, %H:%M")
LOGDIR=${LOGDIR:-"$HERE/target/bench-logs/$STAMP"}
RES="$LOGDIR/res"
REPORT="$LOGDIR/report.md"
mkdir -p "$RES"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- tools, build

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v slowhttptest >/dev/null || missing+=(slowhttptest)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    # valgrind only for S16, which alone needs it.
    if [[ " $SCENARIOS " == *" S16 "* ]]; then
        command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || missing+=(valgrind)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" != 0 ] && sudo="sudo"
    timeout 600 $sudo apt-get update -qq || log "apt-get update failed"
    timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        log "apt-get install ${missing[*]} failed; scenarios needing them will fail"
}

build() {
    log "building (release)"
    if ! timeout 1800 cargo build --release --quiet --manifest-path "$HERE/Cargo.toml"; then
        log "build failed"
        exit 1
    fi
}

# make_cert: an ECDSA P-256 key and a self-signed certificate for localhost and
# 127.0.0.1, unless the ones there are still good for a day. The probes' curl
# checks the servers against it (--cacert), so a server that sent the wrong
# certificate fails its start-up check.
make_cert() {
    if [ -s "$BENCH_TLS_KEY" ] && openssl x509 -checkend 86400 -noout -in "$BENCH_TLS_CERT" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$TLS_DIR"
    if ! timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$BENCH_TLS_KEY" -out "$BENCH_TLS_CERT" >"$TLS_DIR/openssl.log" 2>&1; then
        log "making the TLS certificate failed (see $TLS_DIR/openssl.log); TLS servers will fail to start"
    fi
}

raise_fd_limit() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    log "open-file limit: $(ulimit -n)"
}

# ------------------------------------------------------------ server lifecycle

SERVER_PID=""
# What start_server runs the server under (S16: valgrind), and how long it
# waits for the server's first answer.
SERVER_WRAP=()
START_SECS=10

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server NAME: starts it and waits (bounded) until `GET /` answers.
# On failure prints the reason and returns 1.
start_server() {
    local name=$1 port=${PORT[$1]} i
    if [ ! -x "$BIN/$name" ]; then
        echo "not built ($BIN/$name missing)"
        return 1
    fi
    for i in $(seq 50); do port_busy "$port" || break; sleep 0.1; done
    if port_busy "$port"; then
        echo "port $port still in use"
        return 1
    fi
    "${SRV[@]}" "${SERVER_WRAP[@]}" "$BIN/$name" "127.0.0.1:$port" >>"$LOGDIR/$name.out" 2>>"$LOGDIR/$name.err" 9>&- &
    SERVER_PID=$!
    local deadline=$((SECONDS + START_SECS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null
            echo "exited at start (status $?)"
            SERVER_PID=""
            return 1
        fi
        # The WebSocket servers are ready when one socket echoes a message
        # (the peers answer a plain GET with nothing); the others when GET /
        # is answered.
        if [ -n "${WS_SERVER[$name]:-}" ]; then
            if timeout -k 1 4 "${LOAD[@]}" "$BIN/ws_load" probe "127.0.0.1:$port" >/dev/null 2>&1; then
                return 0
            fi
        elif [ "$("${LOAD[@]}" curl -s -m 1 --cacert "$BENCH_TLS_CERT" -o /dev/null -w '%{http_code}' \
            "$(url "$name" /)")" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    if [ -n "${WS_SERVER[$name]:-}" ]; then
        echo "did not echo a WebSocket message within $START_SECS s of starting"
    else
        echo "did not answer GET / within $START_SECS s of starting"
    fi
    stop_server
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local i
    kill -TERM "$SERVER_PID" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
}

# A field of /proc/PID/status, the number only (kB for sizes).
proc_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null; }

server_alive() { [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; }

# ------------------------------------------------------------------- results

# record SCENARIO SERVER METRIC VALUE: one line per repetition.
record() {
    mkdir -p "$RES/$1/$2"
    echo "$4" >>"$RES/$1/$2/$3"
}

# record_all SCENARIO SERVER VALUE METRIC...: the same value for several metrics.
record_all() {
    local sc=$1 server=$2 value=$3 metric
    shift 3
    for metric in "$@"; do record "$sc" "$server" "$metric" "$value"; done
}

# record_fail SCENARIO SERVER WHY METRIC...: "failed: WHY" in the first metric's
# cell, "-" in the others.
record_fail() {
    local sc=$1 server=$2 why=$3 first=$4
    shift 4
    record "$sc" "$server" "$first" "failed: $why"
    record_all "$sc" "$server" "-" "$@"
}

is_number() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }

# first_failure FILE: prints the first line of FILE that is not a number (a
# "failed: ..." cell) and succeeds, or fails if every line is a number.
first_failure() {
    local line
    while IFS= read -r line; do
        is_number "$line" || { echo "$line"; return 0; }
    done <"$1"
    return 1
}

# cell SCENARIO SERVER METRIC: the median of the repetitions, or the first
# failure among them, or "-" if nothing was recorded.
cell() {
    local file="$RES/$1/$2/$3" why
    [ -s "$file" ] || { echo "-"; return; }
    if why=$(first_failure "$file"); then
        echo "$why"
        return
    fi
    sort -g "$file" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# fmt VALUE DECIMALS
fmt() { if is_number "$1"; then printf "%.${2}f" "$1"; else printf "%s" "$1"; fi; }

# ratio A B: A/B as "0.93x", or "-" if either is not a number.
ratio() {
    if is_number "$1" && is_number "$2" && awk -v b="$2" 'BEGIN { exit !(b != 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
    else
        printf -- "-"
    fi
}

# spread SCENARIO SERVER METRIC DECIMALS: "min–max (x %)" of the repetitions,
# x being (max - min) / median; "1 run" for one; "-" if any failed.
spread() {
    local file="$RES/$1/$2/$3"
    [ -s "$file" ] || { echo "-"; return; }
    first_failure "$file" >/dev/null && { echo "-"; return; }
    sort -g "$file" | awk -v d="$4" '
        { v[NR] = $1 }
        END {
            if (NR == 1) { print "1 run"; exit }
            med = v[int((NR + 1) / 2)]
            printf "%.*f–%.*f", d, v[1], d, v[NR]
            if (med != 0) printf " (%.0f %%)", 100 * (v[NR] - v[1]) / med
            printf "\n"
        }'
}

# server_class SERVER, scenario_class SCENARIO: tls, ws or http. A server
# takes part in the scenarios of its own class only.
server_class() {
    if [ -n "${TLS_SERVER[$1]:-}" ]; then echo tls; elif [ -n "${WS_SERVER[$1]:-}" ]; then echo ws; else echo http; fi
}
scenario_class() {
    if [ -n "${TLS_SCENARIO[$1]:-}" ]; then echo tls; elif [ -n "${WS_SCENARIO[$1]:-}" ]; then echo ws; else echo http; fi
}

# servers_for SCENARIO: the servers of $SERVERS that it is for, in order: the
# TLS servers for a TLS scenario, the WebSocket servers for a WebSocket one,
# the others for the rest.
servers_for() {
    local server class
    class=$(scenario_class "$1")
    for server in $SERVERS; do
        [ "$1" = S16 ] && [ -z "${CALLGRIND_SERVER[$server]:-}" ] && continue
        [ "$(server_class "$server")" = "$class" ] && echo "$server"
    done
}

# reference_for SCENARIO: the server its ratios are to.
reference_for() {
    case $(scenario_class "$1") in
        tls) echo "$TLS_REFERENCE" ;;
        ws) echo "$WS_REFERENCE" ;;
        *) echo "$REFERENCE" ;;
    esac
}

# table SCENARIO "METRIC:LABEL:DECIMALS:FLAGS" ...: one markdown table, a column
# per metric, then per FLAGS letter: n, the min–max of the repetitions beside
# the median; r, the ratio to the scenario's reference (reference_for); b, the
# ratio to $BLOCKING_PEER. A row per server the scenario is for, or per name
# in $TABLE_ROWS if set (S15's comparison row).
table() {
    local sc=$1 spec metric label dec want server head="| server |" rule="|---|" row value ref
    ref=$(reference_for "$1")
    shift
    for spec in "$@"; do
        IFS=: read -r metric label dec want <<<"$spec"
        head+=" $label |"
        rule+="---:|"
        [[ $want == *n* ]] && head+=" min–max of $REPS |" && rule+="---:|"
        [[ $want == *r* ]] && head+=" vs $ref |" && rule+="---:|"
        [[ $want == *b* ]] && head+=" vs $BLOCKING_PEER |" && rule+="---:|"
    done
    echo "$head"
    echo "$rule"
    for server in ${TABLE_ROWS:-$(servers_for "$sc")}; do
        row="| $server |"
        for spec in "$@"; do
            IFS=: read -r metric label dec want <<<"$spec"
            value=$(cell "$sc" "$server" "$metric")
            row+=" $(fmt "$value" "$dec") |"
            [[ $want == *n* ]] && row+=" $(spread "$sc" "$server" "$metric" "$dec") |"
            [[ $want == *r* ]] && row+=" $(ratio "$value" "$(cell "$sc" "$ref" "$metric")") |"
            [[ $want == *b* ]] && row+=" $(ratio "$value" "$(cell "$sc" "$BLOCKING_PEER" "$metric")") |"
        done
        echo "$row"
    done
}

# --------------------------------------------------------------- load tools

# run_wrk OUTFILE ARGS...: wrk bounded in time; its output goes to OUTFILE.
run_wrk() {
    local out=$1
    shift
    timeout -k 5 $((DUR + 30)) "${LOAD[@]}" wrk --latency -d "${DUR}s" "$@" >"$out" 2>&1
}

# parse_wrk FILE STATUS: prints "rps p99_ms errors requests", or "failed: why".
parse_wrk() {
    local file=$1 status=$2
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "failed: wrk did not finish in time"
        return
    fi
    awk -v status="$status" -v dur="$DUR" '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v + 0
        }
        / requests in /           { reqs = $1 }
        /Requests\/sec:/          { rps = $2 }
        /^ +99%/                  { p99 = ms($2) }
        /Socket errors:/          { line = $0; gsub(/,/, "", line); split(line, f, " ");
                                    sock = f[4] + f[6] + f[8] + f[10]; tmo = f[10] }
        /Non-2xx or 3xx/          { non2 = $NF }
        END {
            if (rps == "") { printf "failed: wrk error (exit %s)\n", status; exit }
            if (reqs + 0 == 0) { print "failed: no request answered in " dur "s"; exit }
            printf "%s %s %d %d\n", rps, (p99 == "" ? "n/a" : p99), sock + non2, reqs
        }' "$file"
}

# sleep_until T0 FRACTION: sleeps until FRACTION x DUR seconds after T0 (an
# $EPOCHREALTIME), or not at all if that is past.
sleep_until() {
    sleep "$(awk -v t0="$1" -v f="$2" -v d="$DUR" -v now="$EPOCHREALTIME" \
        'BEGIN { x = t0 + f * d - now; printf "%.3f", (x > 0 ? x : 0) }')"
}

# wrk_scenario SC SERVER RPS_METRIC P99_METRIC ERR_METRIC ARGS...: one wrk run,
# recorded; also a new client's `GET /` half-way through it (metric "probe"),
# and the server's Threads: and VmRSS (kB) at 80 % of it ("threads", "rss").
wrk_scenario() {
    local sc=$1 server=$2 m_rps=$3 m_p99=$4 m_err=$5 out parsed rps p99 err
    shift 5
    out="$LOGDIR/$sc.$server.$(date +%s%N).wrk"
    local t0=$EPOCHREALTIME
    run_wrk "$out" "$@" &
    local wp=$! pp status probe threads="" rss=""
    # wrk counts no error for a connection the server never serves; a new
    # client's request half-way through the run shows that kind of starvation.
    # It runs on its own, so that a slow answer does not delay the sample.
    (
        sleep_until "$t0" 0.5
        "${LOAD[@]}" curl -s -m 5 --cacert "$BENCH_TLS_CERT" -o /dev/null -w '%{http_code} %{time_total}' \
            "$(url "$server" /)"
    ) >"$out.probe" &
    pp=$!
    # While wrk is still running: what the load made the server grow to.
    sleep_until "$t0" 0.8
    if kill -0 "$wp" 2>/dev/null; then
        threads=$(proc_field "$SERVER_PID" Threads)
        rss=$(proc_field "$SERVER_PID" VmRSS)
    fi
    wait "$pp"
    probe=$(cat "$out.probe")
    wait "$wp"
    status=$?
    if [[ $probe == "200 "* ]]; then
        record "$sc" "$server" probe "$(awk -v t="${probe#200 }" 'BEGIN { printf "%.2f", t * 1000 }')"
    else
        record "$sc" "$server" probe "failed: no answer in 5 s"
    fi
    parsed=$(parse_wrk "$out" "$status")
    if [[ $parsed == failed:* ]]; then
        record_fail "$sc" "$server" "${parsed#failed: }" "$m_rps" "$m_p99" "$m_err" threads rss
        return
    fi
    read -r rps p99 err _ <<<"$parsed"
    record "$sc" "$server" "$m_rps" "$rps"
    record "$sc" "$server" "$m_p99" "$p99"
    record "$sc" "$server" "$m_err" "$err"
    if [ -n "$threads" ] && [ -n "$rss" ]; then
        record "$sc" "$server" threads "$threads"
        record "$sc" "$server" rss "$rss"
    else
        record_fail "$sc" "$server" "not sampled at 80 % of the run (wrk or server gone)" threads rss
    fi
    if ! server_alive; then
        record "$sc" "$server" "$m_rps" "failed: server died during the run"
    fi
}

# ------------------------------------------------------------------ scenarios

url() {
    if [ -n "${TLS_SERVER[$1]:-}" ]; then
        echo "https://127.0.0.1:${PORT[$1]}$2"
    else
        echo "http://127.0.0.1:${PORT[$1]}$2"
    fi
}

s1() { wrk_scenario S1 "$1" rps p99 err -t1 -c64 "$(url "$1" /)"; }

s2() { wrk_scenario S2 "$1" rps p99 err -t1 -c256 "$(url "$1" /sleep)"; }

# sample_while_holding OUT PID TRIES: waits (TRIES x 0.1 s at most) until the
# helper PID, writing OUT, says "holding" or exits; then samples the server's
# VmRSS and Threads into HELD_RSS and HELD_THREADS (empty if it never held)
# and stops the helper. S3 and S15 measure idle connections this way.
sample_while_holding() {
    local out=$1 hp=$2 tries=$3 i
    HELD_RSS='' HELD_THREADS=''
    for i in $(seq "$tries"); do
        grep -q '^holding' "$out" && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q '^holding' "$out"; then
        sleep 0.5
        HELD_RSS=$(proc_field "$SERVER_PID" VmRSS)
        HELD_THREADS=$(proc_field "$SERVER_PID" Threads)
    fi
    kill "$hp" 2>/dev/null
    wait "$hp" 2>/dev/null
}

s3() { idle_http S3 "$1" "$1" "$S3_CONNS"; }

# idle_http SC SERVER KEY COUNT: S3's method, `idle_conns` with COUNT idle
# keep-alive connections, recorded as KEY's row of SC (S3, and S15's
# comparison row for plain ours).
idle_http() {
    local sc=$1 server=$2 key=$3 count=$4 out base hp rss threads opened latency stalled per
    out="$LOGDIR/$sc.$key.$(date +%s%N).out"
    base=$(proc_field "$SERVER_PID" VmRSS)
    timeout -k 5 150 "${LOAD[@]}" "$BIN/idle_conns" "127.0.0.1:${PORT[$server]}" "$count" 60 >"$out" 2>&1 &
    hp=$!
    sample_while_holding "$out" "$hp" 1200
    rss=$HELD_RSS threads=$HELD_THREADS
    opened=$(awk '$1 == "opened" { print $2 }' "$out")
    stalled=$(sed -n 's/^stalled: //p' "$out")
    latency=$(sed -n 's/^latency_ms //p; s/^latency \(failed: .*\)/\1/p' "$out")
    if [ -z "$opened" ] || [ -z "$latency" ]; then
        record_fail "$sc" "$key" "helper did not finish: $(tail -c 120 "$out" | tr '\n' ' ')" \
            latency threads rss_per_conn opened
        return
    fi
    record "$sc" "$key" opened "$opened"
    [ -n "$stalled" ] && echo "$key: $stalled" >>"$RES/$sc.notes"
    record "$sc" "$key" latency "$latency"
    if [ -z "${rss:-}" ] || ! server_alive; then
        record_fail "$sc" "$key" "server gone" threads rss_per_conn
        return
    fi
    record "$sc" "$key" threads "$threads"
    if [ "$opened" -gt 0 ] && [ -n "$base" ]; then
        per=$(awk -v a="$rss" -v b="$base" -v n="$opened" 'BEGIN { printf "%.2f", (a - b) / n }')
        record "$sc" "$key" rss_per_conn "$per"
    else
        record "$sc" "$key" rss_per_conn "failed: no connection opened"
    fi
}

s4() {
    local server=$1 out status
    if [ -n "${NO_H2[$server]:-}" ]; then
        record S4 "$server" rps "n/a"
        return
    fi
    out="$LOGDIR/S4.$server.$(date +%s%N).h2load"
    timeout -k 5 120 "${LOAD[@]}" h2load -N 5 -n "$S4_N" -c 16 -m 32 "$(url "$server" /)" >"$out" 2>&1
    status=$?
    local parsed
    parsed=$(awk -v status="$status" -v n="$S4_N" '
        /^finished in/   { rps = $4 }
        /^requests:/     { ok = $8 }
        END {
            if (status == 124 || status == 137) { print "failed: h2load did not finish in 120 s"; exit }
            if (rps == "" || ok == "") { printf "failed: h2load error (exit %s)\n", status; exit }
            if (ok + 0 < n + 0) { printf "failed: %d of %d requests succeeded\n", ok, n; exit }
            print rps
        }' "$out")
    record S4 "$server" rps "$parsed"
}

s5_wrk() { wrk_scenario S5 "$1" rps p99 err -t1 -c16 -s "$HERE/post1m.lua" "$(url "$1" /echo)"; }

s5_upload() {
    local server=$1 base peak out status answer secs expected
    expected=$(head -c "$UPLOAD_SIZE" /dev/zero | wc -c)
    out="$LOGDIR/S5.$server.$(date +%s%N).upload"
    # A server that cannot take a 1 MiB body would only make the big upload wait
    # out its whole limit.
    head -c 1048576 /dev/zero >"$LOGDIR/.1mib"
    answer=$(timeout -k 2 15 "${LOAD[@]}" curl -sS -m 10 -H 'Expect:' --data-binary @"$LOGDIR/.1mib" \
        "$(url "$server" /echo)" 2>&1)
    if [ "$answer" != 1048576 ]; then
        [ -z "$answer" ] || [[ $answer == *"timed out"* ]] && answer="no answer in 10 s"
        record_fail S5 "$server" "1 MiB POST: $(head -c 80 <<<"$answer" | tr '\n' ' ')" up_secs up_rss
        return
    fi
    base=$(proc_field "$SERVER_PID" VmRSS)
    # `Expect:` is cleared so curl streams at once instead of waiting up to 1 s
    # for a 100 Continue; the body is sent chunked, as read from the pipe.
    "${LOAD[@]}" head -c "$UPLOAD_SIZE" /dev/zero |
        timeout -k 5 130 "${LOAD[@]}" curl -sS -m 120 -H 'Expect:' -H 'Content-Type: application/octet-stream' \
            -T - -X POST -o "$out.body" -w '%{time_total}' "$(url "$server" /echo)" >"$out" 2>&1
    status=$?
    peak=$(proc_field "$SERVER_PID" VmHWM)
    answer=$(cat "$out.body" 2>/dev/null)
    secs=$(tail -c 50 "$out" | grep -Eo '[0-9]+\.[0-9]+$')
    if [ "$status" = 28 ] || [ "$status" = 124 ] || [ "$status" = 137 ]; then
        record_fail S5 "$server" "no answer in 120 s" up_secs up_rss
    elif [ "$status" != 0 ]; then
        record_fail S5 "$server" "curl exit $status: $(head -c 80 "$out" | tr '\n' ' ')" up_secs up_rss
    elif [ "$answer" != "$expected" ]; then
        record_fail S5 "$server" "answered '$(head -c 40 <<<"$answer")', expected $expected" up_secs up_rss
    else
        record S5 "$server" up_secs "$secs"
        if [ -n "$peak" ] && [ -n "$base" ]; then
            record S5 "$server" up_rss "$(awk -v p="$peak" -v b="$base" 'BEGIN { printf "%.1f", (p - b) / 1024 }')"
        else
            record S5 "$server" up_rss "failed: server gone"
        fi
    fi
}

s6() {
    local server=$1 out start next i probes=0 answered=0 code sh
    out="$LOGDIR/S6.$server.$(date +%s%N)"
    timeout -k 5 $((S6_SECS + 60)) "${LOAD[@]}" slowhttptest -c 1000 -H -i 10 -r 200 -l "$S6_SECS" \
        -u "$(url "$server" /)" >"$out.slowhttptest" 2>&1 &
    sh=$!
    start=$(date +%s)
    for ((i = 1; i * 5 <= S6_SECS; i++)); do
        next=$((start + 5 * i))
        while [ "$(date +%s)" -lt "$next" ]; do sleep 0.2; done
        code=$("${LOAD[@]}" curl -s -m 5 -o /dev/null -w '%{http_code}' "$(url "$server" /)")
        probes=$((probes + 1))
        [ "$code" = 200 ] && answered=$((answered + 1))
        echo "probe $i at +$((5 * i))s: $code" >>"$out.probes"
    done
    kill -0 "$sh" 2>/dev/null && sleep 2
    kill "$sh" 2>/dev/null
    wait "$sh" 2>/dev/null
    if [ "$probes" = 0 ]; then
        record S6 "$server" probes "failed: S6_SECS < 5, no probe"
    else
        record S6 "$server" probes "$(awk -v a="$answered" -v p="$probes" 'BEGIN { printf "%.0f", 100 * a / p }')"
        echo "$server: $answered/$probes probes answered" >>"$RES/S6.notes"
    fi
}

s7() { wrk_scenario S7 "$1" rps p99 err -t1 -c1000 "$(url "$1" /1k)"; }

s10() { wrk_scenario S10 "$1" rps p99 err -t1 -c1000 "$(url "$1" /)"; }

# S8: mixed load. 24 connections keep handlers in 50 ms blocking sleeps while 4
# others send fast `GET /`; what matters is how the fast ones fare.
s8() {
    local server=$1 base slow fast sp fp ss fs parsed_slow parsed_fast
    local f_rps f_p99 f_err s_rps s_err
    base="$LOGDIR/S8.$server.$(date +%s%N)"
    slow="$base.slow.wrk"
    fast="$base.fast.wrk"
    run_wrk "$slow" -t1 -c24 "$(url "$server" /sleep50)" &
    sp=$!
    run_wrk "$fast" -t1 -c4 "$(url "$server" /)" &
    fp=$!
    wait "$sp"
    ss=$?
    wait "$fp"
    fs=$?
    parsed_fast=$(parse_wrk "$fast" "$fs")
    parsed_slow=$(parse_wrk "$slow" "$ss")
    if [[ $parsed_fast == failed:* ]]; then
        record_fail S8 "$server" "fast: ${parsed_fast#failed: }" fast_rps fast_p99 slow_rps err
        return
    fi
    if [[ $parsed_slow == failed:* ]]; then
        record_fail S8 "$server" "slow: ${parsed_slow#failed: }" fast_rps fast_p99 slow_rps err
        return
    fi
    read -r f_rps f_p99 f_err _ <<<"$parsed_fast"
    read -r s_rps _ s_err _ <<<"$parsed_slow"
    record S8 "$server" fast_rps "$f_rps"
    record S8 "$server" fast_p99 "$f_p99"
    record S8 "$server" slow_rps "$s_rps"
    record S8 "$server" err $((f_err + s_err))
    if ! server_alive; then
        record S8 "$server" fast_rps "failed: server died during the run"
    fi
}

CLK_TCK=$(getconf CLK_TCK)

# ctx_cpu PID: prints "SWITCHES TICKS": voluntary + nonvoluntary context
# switches summed over the process's threads (/proc/PID/task/*/status), and its
# utime + stime in clock ticks (/proc/PID/stat fields 14 and 15). Fails if the
# process is gone.
ctx_cpu() {
    local sw ticks
    sw=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '
        $1 == "voluntary_ctxt_switches:" || $1 == "nonvoluntary_ctxt_switches:" { s += $2 }
        END { print s + 0 }')
    # The name, field 2, is in brackets and may hold spaces; after it, field 14
    # is the 12th.
    ticks=$(sed 's/.*) //' /proc/"$1"/stat 2>/dev/null | awk '{ print $12 + $13 }')
    [ -n "$ticks" ] || return 1
    echo "$sw $ticks"
}

# cost_window PID: watches PID for 2 s; prints "WAKEUPS_PER_S CPU_MS_PER_S"
# (context switches per second, and ms of CPU time per second), or nothing if
# the process went away.
cost_window() {
    local a b t0 t1
    t0=$EPOCHREALTIME
    a=$(ctx_cpu "$1") || return
    sleep 2
    t1=$EPOCHREALTIME
    b=$(ctx_cpu "$1") || return
    awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" 'BEGIN {
        split(a, x, " "); split(b, y, " "); d = t1 - t0
        printf "%.1f %.1f\n", (y[1] - x[1]) / d, (y[2] - x[2]) * 1000 / hz / d }'
}

# S9: what a server costs while its only work is one handler sleeping 3 s, and
# while it has no work at all.
s9() {
    local server=$1 out idle busy cp code threads
    out="$LOGDIR/S9.$server.$(date +%s%N)"
    # Idle first: the start-up check's `GET /` is over, nothing is ready.
    sleep 0.5
    idle=$(cost_window "$SERVER_PID")
    timeout -k 2 15 "${LOAD[@]}" curl -s -m 10 -o /dev/null -w '%{http_code}' \
        "$(url "$server" /sleep3s)" >"$out.curl" 2>&1 &
    cp=$!
    # The request is in, and its handler asleep, well before this.
    sleep 0.5
    threads=$(proc_field "$SERVER_PID" Threads)
    busy=$(cost_window "$SERVER_PID")
    wait "$cp"
    code=$(cat "$out.curl")
    echo "idle: $idle; handler sleeping: $busy; threads: $threads; /sleep3s: $code" >"$out.figures"
    if [ -z "$idle" ] || [ -z "$busy" ] || ! server_alive; then
        record_fail S9 "$server" "server gone" wake cpu idle_wake idle_cpu threads
    elif [ "$code" != 200 ]; then
        record_fail S9 "$server" "/sleep3s answered '${code:-nothing}' (curl -m 10)" \
            wake cpu idle_wake idle_cpu threads
    else
        record S9 "$server" wake "${busy% *}"
        record S9 "$server" cpu "${busy#* }"
        record S9 "$server" idle_wake "${idle% *}"
        record S9 "$server" idle_cpu "${idle#* }"
        record S9 "$server" threads "$threads"
    fi
}

# ------------------------------------------------------------- TLS scenarios

s11() { wrk_scenario S11 "$1" rps p99 err -t1 -c64 "$(url "$1" /)"; }

# S12: HTTP/2 over TLS, as ALPN chose it: h2load offers h2 only and prints the
# protocol it got, which must be h2.
s12() {
    local server=$1 out status parsed
    out="$LOGDIR/S12.$server.$(date +%s%N).h2load"
    timeout -k 5 $((DUR + 30)) "${LOAD[@]}" h2load -c 16 -m 32 -D "$DUR" "$(url "$server" /)" >"$out" 2>&1
    status=$?
    parsed=$(awk -v status="$status" '
        /^Application protocol:/ { proto = $3 }
        /^finished in/           { rps = $4 }
        /^requests:/             { ok = $8; bad = $10 + $12 + $14 }
        END {
            if (status == 124 || status == 137) { print "failed: h2load did not finish in time"; exit }
            if (proto != "" && proto != "h2") { printf "failed: ALPN chose %s, not h2\n", proto; exit }
            if (rps == "" || ok == "") { printf "failed: h2load error (exit %s)\n", status; exit }
            if (proto == "") { print "failed: h2load named no application protocol"; exit }
            if (ok + 0 == 0) { print "failed: no request succeeded"; exit }
            print rps, bad
        }' "$out")
    if [[ $parsed == failed:* ]]; then
        record_fail S12 "$server" "${parsed#failed: }" rps err
        return
    fi
    record S12 "$server" rps "${parsed% *}"
    record S12 "$server" err "${parsed#* }"
}

# S13: new connections, each a full TLS handshake, per second. wrk and h2load
# resume the session when they reconnect (see README), so the clients are
# S13_CLIENTS `openssl s_time -new` at once, each a loop of connect, full
# handshake, `GET / HTTP/1.0`, read to the close, close. The server's CPU time
# per handshake is reported beside the rate because the rate may be the load
# tool's limit rather than the server's; the server's share of a core says
# which.
s13() {
    local server=$1 base i status failed="" a b t0 t1 pids=() parsed hs cpu_us cpu_pct
    base="$LOGDIR/S13.$server.$(date +%s%N).s_time"
    # s_time stops at the first whole second past its -time; started in the same
    # second, every client stops at the same moment, so the wall time below is
    # every client's.
    sleep "$(awk -v now="$EPOCHREALTIME" 'BEGIN { printf "%.3f", 1.02 - (now - int(now)) }')"
    a=$(ctx_cpu "$SERVER_PID")
    t0=$EPOCHREALTIME
    for ((i = 1; i <= S13_CLIENTS; i++)); do
        timeout -k 5 $((DUR + 30)) "${LOAD[@]}" openssl s_time -connect "127.0.0.1:${PORT[$server]}" \
            -new -www / -time "$DUR" >"$base.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}"
        status=$?
        [ -n "$failed" ] && continue
        if [ "$status" = 124 ] || [ "$status" = 137 ]; then
            failed="s_time did not finish in time"
        elif [ "$status" != 0 ]; then
            failed="s_time exit $status: $(grep -v '^\*' "$base.$((i + 1))" | head -c 80 | tr '\n' ' ')"
        fi
    done
    t1=$EPOCHREALTIME
    b=$(ctx_cpu "$SERVER_PID")
    if [ -n "$failed" ]; then
        record_fail S13 "$server" "$failed" hs cpu_us cpu_pct
        return
    fi
    if [ -z "$a" ] || [ -z "$b" ] || ! server_alive; then
        record_fail S13 "$server" "server died during the run" hs cpu_us cpu_pct
        return
    fi
    # Per client: "N connections in T real seconds, B bytes read per connection".
    parsed=$(cat "$base".* | awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v k="$S13_CLIENTS" '
        / connections in .* real seconds/ { n += $1; clients++; if ($7 + 0 == 0) empty++ }
        END {
            if (clients != k) { printf "failed: %d of %d clients reported\n", clients, k; exit }
            if (empty) { printf "failed: %d client(s) read no answer to GET /\n", empty; exit }
            if (n == 0) { print "failed: no connection made"; exit }
            split(a, x, " "); split(b, y, " "); cpu = (y[2] - x[2]) / hz; wall = t1 - t0
            printf "%.1f %.1f %.1f\n", n / wall, cpu * 1e6 / n, 100 * cpu / wall
        }')
    if [[ $parsed == failed:* ]]; then
        record_fail S13 "$server" "${parsed#failed: }" hs cpu_us cpu_pct
        return
    fi
    read -r hs cpu_us cpu_pct <<<"$parsed"
    record S13 "$server" hs "$hs"
    record S13 "$server" cpu_us "$cpu_us"
    record S13 "$server" cpu_pct "$cpu_pct"
}

# ------------------------------------------------------- WebSocket scenarios

# S14: messages echoed over 64 WebSockets, each a closed loop of a 32-byte
# text message and its echo (`ws_load echo`). Beside the rate and round trip:
# the server's CPU and context switches over the run (per message), and
# ws_load's own CPU, which says whether the client set the pace.
s14() {
    local server=$1 out lp status a="" b="" t0 t1="" i threads="" parsed
    out="$LOGDIR/S14.$server.$(date +%s%N).ws_load"
    timeout -k 5 $((DUR + 30)) "${LOAD[@]}" "$BIN/ws_load" echo "127.0.0.1:${PORT[$server]}" 64 "$DUR" 32 \
        >"$out" 2>&1 &
    lp=$!
    # The server's counters are read when ws_load says `started` (all 64 open)
    # and `finished` (all still open): a thread-per-connection server's
    # threads end with their connections, and their counts with them.
    for i in $(seq 300); do
        grep -q '^started' "$out" && break
        kill -0 "$lp" 2>/dev/null || break
        sleep 0.05
    done
    t0=$EPOCHREALTIME
    grep -q '^started' "$out" && a=$(ctx_cpu "$SERVER_PID")
    sleep_until "$t0" 0.8
    kill -0 "$lp" 2>/dev/null && threads=$(proc_field "$SERVER_PID" Threads)
    for i in $(seq $((20 * (DUR + 20)))); do
        grep -q '^finished' "$out" && break
        kill -0 "$lp" 2>/dev/null || break
        sleep 0.05
    done
    if grep -q '^finished' "$out"; then
        b=$(ctx_cpu "$SERVER_PID")
        t1=$EPOCHREALTIME
    fi
    wait "$lp"
    status=$?
    local metrics="rps p50 p99 err cpu_pct cs_per_msg client_cpu threads"
    # Killed while closing, after `finished`, its figures still stand.
    if { [ "$status" = 124 ] || [ "$status" = 137 ]; } && [ -z "$t1" ]; then
        record_fail S14 "$server" "ws_load did not finish in time" $metrics
        return
    fi
    if grep -q '^failed: ' "$out"; then
        record_fail S14 "$server" "$(sed -n 's/^failed: //p' "$out" | head -c 120)" $metrics
        return
    fi
    if [ -z "$a" ] || [ -z "$b" ] || ! server_alive; then
        record_fail S14 "$server" "server died during the run, or ws_load said no started/finished" $metrics
        return
    fi
    parsed=$(awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" '
        $1 == "messages"       { n = $2 }
        $1 == "msgs_per_sec"   { rps = $2 }
        $1 == "p50_ms"         { p50 = $2 }
        $1 == "p99_ms"         { p99 = $2 }
        $1 == "errors"         { err = $2 }
        $1 == "client_cpu_pct" { ccpu = $2 }
        END {
            if (rps == "" || n + 0 == 0) { print "failed: ws_load printed no rate"; exit }
            split(a, x, " "); split(b, y, " ")
            printf "%s %s %s %s %.1f %.3f %s\n", rps, p50, p99, err,
                100 * (y[2] - x[2]) / hz / (t1 - t0), (y[1] - x[1]) / n, ccpu
        }' "$out")
    if [[ $parsed == failed:* ]]; then
        record_fail S14 "$server" "${parsed#failed: }" $metrics
        return
    fi
    local rps p50 p99 err cpu_pct cs client_cpu
    read -r rps p50 p99 err cpu_pct cs client_cpu <<<"$parsed"
    record S14 "$server" rps "$rps"
    record S14 "$server" p50 "$p50"
    record S14 "$server" p99 "$p99"
    record S14 "$server" err "$err"
    record S14 "$server" cpu_pct "$cpu_pct"
    record S14 "$server" cs_per_msg "$cs"
    record S14 "$server" client_cpu "$client_cpu"
    if [ -n "$threads" ]; then
        record S14 "$server" threads "$threads"
    else
        record S14 "$server" threads "failed: not sampled at 80 % of the run"
    fi
}

# S15: S15_CONNS idle WebSockets (`ws_load idle`), then one more WebSocket's
# connect + handshake, timed; the server's Threads: and (VmRSS with them open
# - VmRSS before) / sockets, read while they are open. Short of S15_CONNS is a
# failed cell, with why (the helper's, or the server's own message, such as
# tungstenite_blocking's "thread creation failed").
s15() {
    local server=$1 out hp base rss threads opened latency stalled per why errfile errsize
    out="$LOGDIR/S15.$server.$(date +%s%N).ws_load"
    errfile="$LOGDIR/$server.err"
    errsize=$(stat -c %s "$errfile" 2>/dev/null || echo 0)
    base=$(proc_field "$SERVER_PID" VmRSS)
    # Opening may take up to ws_load's 120 s deadline, the new socket 10 s.
    timeout -k 5 200 "${LOAD[@]}" "$BIN/ws_load" idle "127.0.0.1:${PORT[$server]}" "$S15_CONNS" 60 >"$out" 2>&1 &
    hp=$!
    sample_while_holding "$out" "$hp" 1800
    rss=$HELD_RSS threads=$HELD_THREADS
    opened=$(awk '$1 == "open" { print $2 }' "$out")
    stalled=$(sed -n 's/^stalled: //p' "$out")
    latency=$(sed -n 's/^latency_ms //p; s/^latency \(failed: .*\)/\1/p' "$out")
    if [ -z "$opened" ] || [ -z "$latency" ]; then
        record_fail S15 "$server" "helper did not finish: $(tail -c 120 "$out" | tr '\n' ' ')" \
            threads rss_per_conn latency opened
        return
    fi
    record S15 "$server" opened "$opened"
    if [ "$opened" -lt "$S15_CONNS" ]; then
        # The server's own word, if it logged one during this run, says more
        # than the client's "connection reset".
        why=$(tail -c +$((errsize + 1)) "$errfile" 2>/dev/null | head -1 | sed "s/^$server: //" | head -c 100)
        record_fail S15 "$server" "opened $opened of $S15_CONNS: ${why:-$stalled}" threads rss_per_conn latency
        return
    fi
    record S15 "$server" latency "$latency"
    if [ -z "${rss:-}" ] || ! server_alive; then
        record_fail S15 "$server" "server gone" threads rss_per_conn
        return
    fi
    record S15 "$server" threads "$threads"
    per=$(awk -v a="$rss" -v b="$base" -v n="$opened" 'BEGIN { printf "%.2f", (a - b) / n }')
    record S15 "$server" rss_per_conn "$per"
}

# S15's comparison row: plain ours, S3's method at S15_CONNS connections, so
# that ours_ws's KiB per idle WebSocket can be set against ours's KiB per idle
# HTTP keep-alive connection measured in the same run.
s15_http() { idle_http S15 "$1" ours_http "$S15_CONNS"; }

# ------------------------------------------------------ callgrind scenario

# S16: user-space instructions per request, server side, under callgrind,
# with start-up and connection set-up taken out (README: "S16"). The server
# runs under `valgrind --tool=callgrind` (once sets SERVER_WRAP); for each
# load, on a fresh server:
#   1. a warm-up h2load of S16_N/2 requests, then a dump: start-up, the
#      warm-up and any lazy set-up go into that dump, which is not used;
#   2. h2load of N1 = S16_N requests, then a dump: Ir(N1);
#   3. h2load of N2 = 3 x S16_N requests, then a dump: Ir(N2);
# and records (Ir(N2) - Ir(N1)) / (N2 - N1). Steps 2 and 3 open the same
# connections, so their set-up and close cancel out; what is left is the
# cost of the extra requests. A dump (`callgrind_control -d`) writes the
# counts since the previous one to OUT.PART and zeroes them.
S16_LOADS="h1_64 h1_1000 h2c"
declare -A S16_ARGS=([h1_64]="--h1 -c 64" [h1_1000]="--h1 -c 1000" [h2c]="-c 16 -m 32")
declare -A S16_LABEL=(
    [h1_64]="HTTP/1.1 keep-alive, 64 connections" [h1_1000]="HTTP/1.1 keep-alive, 1,000 connections"
    [h2c]="h2c (HTTP/2 prior knowledge), 16 connections x 32 streams"
)
# The valgrind command line S16 runs servers under; the output file is added
# per run.
S16_VALGRIND=(valgrind --tool=callgrind --quiet)

# cg_dump OUT PART: a dump of the server's counters; prints the Ir total of
# OUT.PART, or fails.
cg_dump() {
    local out=$1 part=$2 i
    timeout -k 2 60 "${LOAD[@]}" callgrind_control -d "$SERVER_PID" >>"$out.control" 2>&1 || return 1
    # `totals:` is the dump's last line: once it is there, the file is whole.
    for i in $(seq 100); do
        grep -q '^totals:' "$out.$part" 2>/dev/null && break
        sleep 0.1
    done
    awk '$1 == "totals:" { print $2; found = 1 } END { exit !found }' "$out.$part" 2>/dev/null
}

# cg_h2load OUT N ARGS...: h2load of N requests, its output in OUT.N; prints
# nothing if all N succeeded, else why not.
cg_h2load() {
    local out=$1.$2 n=$2 status
    shift 2
    timeout -k 5 300 "${LOAD[@]}" h2load -n "$n" "$@" >"$out" 2>&1
    status=$?
    awk -v status="$status" -v n="$n" '
        /^requests:/ { ok = $8 }
        END {
            if (status == 124 || status == 137) { print "h2load did not finish in 300 s"; exit }
            if (ok == "") { printf "h2load error (exit %s)\n", status; exit }
            if (ok + 0 < n + 0) { printf "%d of %d requests succeeded\n", ok, n; exit }
        }' "$out"
}

# s16_load LOAD SERVER: the three steps above for one load of S16_LOADS.
s16_load() {
    local load=$1 server=$2 out n1 n2 why ir1 ir2 url
    out="$LOGDIR/S16.$server.$load.$(date +%s%N)"
    n1=$S16_N
    n2=$((3 * S16_N))
    url=$(url "$server" /)
    # shellcheck disable=SC2086
    why=$(cg_h2load "$out.h2load" $((S16_N / 2)) ${S16_ARGS[$load]} "$url")
    [ -z "$why" ] && ! cg_dump "$CG_OUT" 1 >/dev/null && why="callgrind_control -d failed (see $out.control)"
    # shellcheck disable=SC2086
    [ -z "$why" ] && why=$(cg_h2load "$out.h2load" "$n1" ${S16_ARGS[$load]} "$url")
    [ -z "$why" ] && { ir1=$(cg_dump "$CG_OUT" 2) || why="callgrind_control -d failed (see $out.control)"; }
    # shellcheck disable=SC2086
    [ -z "$why" ] && why=$(cg_h2load "$out.h2load" "$n2" ${S16_ARGS[$load]} "$url")
    [ -z "$why" ] && { ir2=$(cg_dump "$CG_OUT" 3) || why="callgrind_control -d failed (see $out.control)"; }
    if [ -n "$why" ]; then
        record S16 "$server" "$load" "failed: $why"
        return
    fi
    echo "$server $load: Ir($n1) $ir1, Ir($n2) $ir2" >>"$RES/S16.notes"
    record S16 "$server" "$load" "$(awk -v a="$ir1" -v b="$ir2" -v n1="$n1" -v n2="$n2" \
        'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')"
}

# s16 SERVER LOAD: once() for one load, on a fresh server under callgrind
# whose dumps go to CG_OUT.1, .2, ...
s16() {
    local server=$1
    S16_LOAD=$2
    CG_OUT="$LOGDIR/S16.$server.$S16_LOAD.$(date +%s%N).callgrind"
    SERVER_WRAP=("${S16_VALGRIND[@]}" "--callgrind-out-file=$CG_OUT")
    # valgrind takes a few seconds to start a server, more on a busy machine.
    START_SECS=60
    once S16 "$server" s16_run "$S16_LOAD"
    SERVER_WRAP=()
    START_SECS=10
}
s16_run() { s16_load "$S16_LOAD" "$1"; }

# --------------------------------------------------------------------- driver

# metrics of each scenario, for "n/a" and failure cells
declare -A METRICS=(
    [S1]="rps p99 err probe threads rss" [S2]="rps p99 err probe threads rss" [S3]="latency threads rss_per_conn opened"
    [S4]="rps" [S5]="rps p99 err probe up_secs up_rss" [S6]="probes" [S7]="rps p99 err probe threads rss"
    [S8]="fast_rps fast_p99 slow_rps err" [S9]="wake cpu idle_wake idle_cpu threads"
    [S10]="rps p99 err probe threads rss"
    [S11]="rps p99 err probe threads rss" [S12]="rps err" [S13]="hs cpu_us cpu_pct"
    [S14]="rps p50 p99 err cpu_pct cs_per_msg client_cpu threads" [S15]="threads rss_per_conn latency opened"
    [S16]="$S16_LOADS"
)

# start_server sets SERVER_PID, so it must not run in a subshell; this wrapper
# captures its message through a file instead.
start_server_checked() {
    local msg="$LOGDIR/.start_msg"
    : >"$msg"
    if start_server "$1" >"$msg"; then return 0; fi
    cat "$msg"
    return 1
}

# cpu_ticks: the CPU time the hypervisor gave to other guests (steal) and
# all CPU time, in ticks since boot, summed over CPUs.
cpu_ticks() {
    awk '$1 == "cpu" { for (i = 2; i <= NF; i++) all += $i; print $9, all }' /proc/stat
}

# once SC SERVER FUNCTION METRICS [KEY]: a fresh server, one run of FUNCTION,
# stop. A failure to start is recorded in KEY's row (default SERVER); the
# share of CPU time stolen during the run, in KEY's steal.
once() {
    local sc=$1 server=$2 fn=$3 metrics=$4 key=${5:-$2} steal0 ticks0 steal1 ticks1
    if ! start_server_checked "$server" >"$LOGDIR/.why"; then
        record_fail "$sc" "$key" "$(cat "$LOGDIR/.why")" $metrics
        return
    fi
    read -r steal0 ticks0 < <(cpu_ticks)
    "$fn" "$server"
    read -r steal1 ticks1 < <(cpu_ticks)
    record "$sc" "$key" steal "$(awk -v s=$((steal1 - steal0)) -v t=$((ticks1 - ticks0)) \
        'BEGIN { printf "%.1f", t ? 100 * s / t : 0 }')"
    stop_server
}

run_scenario() {
    local sc=$1 server rep reps=$REPS load
    [ "$sc" = S6 ] && reps=$S6_REPS
    # Repetitions are interleaved across servers, so that a burst of load from
    # elsewhere on a shared machine is spread over all of them rather than
    # landing on one server's runs.
    for ((rep = 1; rep <= reps; rep++)); do
        for server in $(servers_for "$sc"); do
            if [ "$server" = limit ] && [ -z "${LIMIT_SCENARIOS[$sc]:-}" ]; then
                [ "$rep" = 1 ] && record_all "$sc" "$server" "n/a" ${METRICS[$sc]}
                continue
            fi
            log "$sc $server run $rep/$reps"
            record "$sc" "$server" load1 "$(cut -d' ' -f1 /proc/loadavg)"
            case $sc in
                S1) once S1 "$server" s1 "${METRICS[S1]}" ;;
                S2) once S2 "$server" s2 "${METRICS[S2]}" ;;
                S3) once S3 "$server" s3 "${METRICS[S3]}" ;;
                S4) once S4 "$server" s4 "${METRICS[S4]}" ;;
                S5)
                    once S5 "$server" s5_wrk "rps p99 err probe threads rss"
                    once S5 "$server" s5_upload "up_secs up_rss"
                    ;;
                S6) once S6 "$server" s6 "${METRICS[S6]}" ;;
                S7) once S7 "$server" s7 "${METRICS[S7]}" ;;
                S8) once S8 "$server" s8 "${METRICS[S8]}" ;;
                S9) once S9 "$server" s9 "${METRICS[S9]}" ;;
                S10) once S10 "$server" s10 "${METRICS[S10]}" ;;
                S11) once S11 "$server" s11 "${METRICS[S11]}" ;;
                S12) once S12 "$server" s12 "${METRICS[S12]}" ;;
                S13) once S13 "$server" s13 "${METRICS[S13]}" ;;
                S14) once S14 "$server" s14 "${METRICS[S14]}" ;;
                S15) once S15 "$server" s15 "${METRICS[S15]}" ;;
                S16) for load in $S16_LOADS; do s16 "$server" "$load"; done ;;
                *) log "unknown scenario $sc" ;;
            esac
        done
        # S15's comparison row: plain ours (whether or not in $SERVERS) with
        # idle HTTP connections, in the same repetition as the WebSockets.
        if [ "$sc" = S15 ] && [ -n "$(servers_for S15)" ]; then
            log "S15 ours (idle HTTP keep-alive, for comparison) run $rep/$reps"
            record S15 ours_http load1 "$(cut -d' ' -f1 /proc/loadavg)"
            once S15 ours s15_http "threads rss_per_conn latency opened" ours_http
        fi
    done
}

# value_range SC METRIC: the lowest and the highest METRIC recorded over
# SC's runs, as "LO to HI"; nothing if no run recorded it.
value_range() {
    cat "$RES/$1"/*/"$2" 2>/dev/null | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) print lo " to " hi }'
}

print_scenario() {
    local sc=$1
    case $sc in
        S1)
            echo "### S1: hello, HTTP/1.1 keep-alive (\`wrk -t1 -c64 -d${DUR}s --latency /\`)"
            echo
            table S1 "rps:req/s:0:nr" "p99:p99 ms:2:r" "err:errors:0:" "probe:new client mid-run ms:2:"
            echo
            echo "ours vs limit (req/s): $(ratio "$(cell S1 ours rps)" "$(cell S1 limit rps)")"
            ;;
        S2)
            echo "### S2: \`/sleep\`, a 10 ms blocking handler, every server at its defaults (\`wrk -t1 -c256 -d${DUR}s --latency /sleep\`)"
            echo
            table S2 "rps:req/s:0:nrb" "p99:p99 ms:2:rb" "err:errors:0:" "threads:threads at 80 %:0:rb" \
                "rss:VmRSS kB at 80 %:0:rb" "probe:new client mid-run ms:2:"
            ;;
        S3)
            echo "### S3: $S3_CONNS idle keep-alive connections, then a new client's \`GET /\`"
            echo
            table S3 "latency:new client ms:2:r" "threads:threads:0:r" "rss_per_conn:RSS KiB/idle conn:2:r" "opened:idle conns opened:0:"
            if [ -s "$RES/S3.notes" ]; then
                echo
                sed 's/^/- stalled: /' "$RES/S3.notes" | sort | uniq -c | sed 's/^ *\([0-9]*\) \(.*\)/\2 (x\1)/'
            fi
            ;;
        S4)
            echo "### S4: HTTP/2 prior knowledge (\`h2load -N 5 -n $S4_N -c 16 -m 32 /\`)"
            echo
            table S4 "rps:req/s:0:nr"
            ;;
        S5)
            echo "### S5: \`POST /echo\` 1 MiB bodies (\`wrk -t1 -c16 -d${DUR}s -s post1m.lua\`), and one $UPLOAD_SIZE upload"
            echo
            table S5 "rps:req/s:0:nr" "p99:p99 ms:2:r" "err:errors:0:" "up_secs:$UPLOAD_SIZE upload s:2:r" "up_rss:RSS growth MiB:1:r"
            ;;
        S6)
            echo "### S6: slowloris (\`slowhttptest -c 1000 -H -i 10 -r 200 -l $S6_SECS\`), a \`curl -m 5\` probe every 5 s"
            echo
            table S6 "probes:% probes answered:0:r"
            if [ -s "$RES/S6.notes" ]; then
                echo
                echo "Probes answered, per run:"
                awk -F': ' '{ runs[$1] = runs[$1] (runs[$1] == "" ? "" : ", ") $2; if (!seen[$1]++) order[++n] = $1 }
                    END { for (i = 1; i <= n; i++) print "- " order[i] ": " runs[order[i]] }' "$RES/S6.notes" |
                    sed 's/ probes answered//g'
            fi
            ;;
        S7)
            echo "### S7: 1 KiB responses at 1000 connections (\`wrk -t1 -c1000 -d${DUR}s --latency /1k\`)"
            echo
            table S7 "rps:req/s:0:nr" "p99:p99 ms:2:r" "err:errors (socket + non-2xx/3xx):0:" "probe:new client mid-run ms:2:"
            ;;
        S8)
            echo "### S8: mixed load, fast requests beside blocked handlers (\`wrk -t1 -c24 -d${DUR}s /sleep50\`" \
                "and at the same time \`wrk --latency -t1 -c4 -d${DUR}s /\`)"
            echo
            table S8 "fast_rps:fast req/s:0:nrb" "fast_p99:fast p99 ms:2:rb" "slow_rps:/sleep50 req/s:0:n" \
                "err:errors (both):0:"
            echo
            echo "/sleep50 at most 24 / 0.05 s = 480 req/s."
            ;;
        S9)
            echo "### S9: wake-ups and CPU while one handler sleeps 3 s (\`curl -m 10 /sleep3s\`, watched 0.5 to 2.5 s" \
                "after it starts), and idle (2 s, no request)"
            echo
            table S9 "wake:wake-ups/s, handler sleeping:1:" "cpu:CPU ms/s, handler sleeping:1:" \
                "idle_wake:wake-ups/s idle:1:" "idle_cpu:CPU ms/s idle:1:" "threads:threads, handler sleeping:0:"
            echo
            echo "Wake-ups: voluntary + involuntary context switches summed over the server's threads" \
                "(/proc/PID/task/*/status), per second. CPU: utime + stime (/proc/PID/stat), in ticks of" \
                "$((1000 / CLK_TCK)) ms, so over 2 s to the nearest $((500 / CLK_TCK)) ms/s."
            ;;
        S10)
            echo "### S10: hello at 1000 connections (\`wrk -t1 -c1000 -d${DUR}s --latency /\`)"
            echo
            table S10 "rps:req/s:0:nr" "p99:p99 ms:2:r" "err:errors (socket + non-2xx/3xx):0:" \
                "threads:threads at 80 %:0:r" "probe:new client mid-run ms:2:"
            echo
            echo "ours vs limit (req/s): $(ratio "$(cell S10 ours rps)" "$(cell S10 limit rps)")"
            ;;
        S11)
            echo "### S11: hello over TLS, HTTP/1.1 keep-alive (\`wrk -t1 -c64 -d${DUR}s --latency https://…/\`)"
            echo
            table S11 "rps:req/s:0:nr" "p99:p99 ms:2:r" "err:errors:0:" "probe:new client mid-run ms:2:"
            ;;
        S12)
            echo "### S12: HTTP/2 over TLS, h2 by ALPN (\`h2load -c 16 -m 32 -D $DUR https://…/\`)"
            echo
            table S12 "rps:req/s:0:nr" "err:failed + errored + timed out:0:"
            echo
            echo "Every run's h2load reported \"Application protocol: h2\" (a run that did not is a failed cell)."
            ;;
        S13)
            echo "### S13: full TLS handshakes per second ($S13_CLIENTS x \`openssl s_time -new -www / -time $DUR\`" \
                "at once, a new connection and handshake per \`GET /\`)"
            echo
            table S13 "hs:handshakes/s:0:nr" "cpu_us:server CPU µs/handshake:0:nr" "cpu_pct:server CPU % of a core:0:"
            echo
            echo "Server CPU: utime + stime (/proc/PID/stat) over the run, per handshake and as a share of one" \
                "core. A server well under 100 % of its core(s) was waiting for the clients: then the" \
                "handshake rate is the load tool's, and CPU per handshake is the figure that tells servers apart."
            ;;
        S14)
            echo "### S14: messages echoed over 64 WebSockets, 32-byte text messages, closed loop" \
                "(\`ws_load echo ADDR 64 $DUR 32\`)"
            echo
            table S14 "rps:messages/s:0:nr" "p50:p50 ms:3:r" "p99:p99 ms:3:r" "err:errors:0:" \
                "cpu_pct:server CPU % of a core:0:" "cs_per_msg:server context switches/message:3:r" \
                "client_cpu:ws_load CPU % of a core:0:" "threads:threads at 80 %:0:"
            echo
            echo "Round trip: ws_load's send of one message to the arrival of its echo, every message timed." \
                "Server CPU: utime + stime over the run; context switches: voluntary + involuntary, summed" \
                "over the server's threads, over the run, per message echoed. ws_load near 100 % of its" \
                "core(s) means the client set the pace, not the server."
            ;;
        S15)
            echo "### S15: $S15_CONNS idle WebSockets (\`ws_load idle ADDR $S15_CONNS 60\`), then one more" \
                "WebSocket's TCP connect + handshake"
            echo
            table S15 "threads:threads:0:r" "rss_per_conn:RSS KiB/idle WebSocket:2:nr" \
                "latency:new WebSocket (connect + handshake) ms:2:r" "opened:sockets opened:0:"
            echo
            echo "For comparison, in the same run: plain \`ours\` with $S15_CONNS idle HTTP/1.1 keep-alive" \
                "connections, S3's method (\`idle_conns ADDR $S15_CONNS 60\`; its new client is a \`GET /\`):"
            echo
            TABLE_ROWS=ours_http table S15 "threads:threads:0:" "rss_per_conn:RSS KiB/idle HTTP conn:2:n" \
                "latency:new client GET / ms:2:" "opened:conns opened:0:"
            echo
            echo "ours_ws KiB per idle WebSocket / ours KiB per idle HTTP connection:" \
                "$(ratio "$(cell S15 ours_ws rss_per_conn)" "$(cell S15 ours_http rss_per_conn)") (goal: <= 2x)"
            if [ -s "$RES/S15.notes" ]; then
                echo
                sed 's/^/- stalled: /' "$RES/S15.notes" | sort | uniq -c | sed 's/^ *\([0-9]*\) \(.*\)/\2 (x\1)/'
            fi
            echo
            echo "RSS is the server process's VmRSS; the kernel's socket buffers are not in it, and are the" \
                "same for every server."
            ;;
        S16)
            echo "### S16: user-space instructions per request, server side (\`valgrind --tool=callgrind\`;" \
                "(Ir(N2) - Ir(N1)) / (N2 - N1), N1 = $S16_N and N2 = $((3 * S16_N)) requests over the same" \
                "connections, after a warm-up of $((S16_N / 2)))"
            echo
            callgrind_table
            echo
            echo "Ir: instructions executed in user space by every thread of the server (callgrind sees no" \
                "kernel code), so system calls count only their user-space side. Lower is better; the ratio's" \
                "goal is <= 1.00x."
            if [ -s "$RES/S16.notes" ]; then
                echo
                echo "Totals, per run:"
                sed 's/^/- /' "$RES/S16.notes"
            fi
            ;;
    esac
    local loads
    loads=$(value_range "$sc" load1)
    if [ -n "$loads" ]; then
        echo
        echo "1-minute load average at the start of this scenario's runs: $loads"
    fi
    # On a virtual machine the host's other guests take CPU time that the load
    # average does not show; a run with a few per cent stolen can lose its
    # tail latency to it.
    local steals disturbed="" server count
    steals=$(value_range "$sc" steal)
    if [ -n "$steals" ]; then
        for server in "$RES/$sc"/*/; do
            server=$(basename "$server")
            count=$(awk '$1 >= 2' "$RES/$sc/$server/steal" 2>/dev/null | wc -l)
            [ "$count" -gt 0 ] && disturbed+="${disturbed:+, }$server x$count"
        done
        echo
        echo "CPU time stolen by the host during each run (all CPUs): $steals %${disturbed:+; runs with 2 % or more: $disturbed}"
    fi
    echo
}

# callgrind_table: S16's table, a row per load and a column per server, then
# each server's ratio to the reference if both ran.
callgrind_table() {
    local servers load server head="| load | command |" rule="|---|---|" row value ref=$REFERENCE
    servers=$(servers_for S16 | tr '\n' ' ')
    for server in $servers; do
        head+=" $server Ir/request | min–max of $REPS |"
        rule+="---:|---:|"
    done
    for server in $servers; do
        [ "$server" != "$ref" ] && [[ " $servers " == *" $ref "* ]] && head+=" $server / $ref |" && rule+="---:|"
    done
    echo "$head"
    echo "$rule"
    for load in $S16_LOADS; do
        row="| ${S16_LABEL[$load]} | \`h2load -n N ${S16_ARGS[$load]} http://127.0.0.1:PORT/\` |"
        for server in $servers; do
            value=$(cell S16 "$server" "$load")
            row+=" $(fmt "$value" 0) | $(spread S16 "$server" "$load" 0) |"
        done
        for server in $servers; do
            [ "$server" != "$ref" ] && [[ " $servers " == *" $ref "* ]] &&
                row+=" $(ratio "$(cell S16 "$server" "$load")" "$(cell S16 "$ref" "$load")") |"
        done
        echo "$row"
    done
}

lock_version() {
    awk -v name="$1" '
        $0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print }
    ' "$HERE/Cargo.lock" | paste -sd, -
}

header() {
    echo "## Run of $STARTED to $(date -u +%H:%M) UTC"
    echo
    echo "- machine: $CORES cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)," \
        "$(uname -sr); load average before: $LOAD_BEFORE"
    echo "- $(rustc --version); crates (bench/Cargo.lock): hyper $(lock_version hyper)," \
        "hyper-util $(lock_version hyper-util), tokio $(lock_version tokio), astra $(lock_version astra) (astra04, ours)," \
        "tiny_http $(lock_version tiny_http), mio $(lock_version mio), rustls $(lock_version rustls)," \
        "tokio-rustls $(lock_version tokio-rustls), tungstenite $(lock_version tungstenite)," \
        "tokio-tungstenite $(lock_version tokio-tungstenite)"
    echo "- tools: $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }'); $(h2load --version 2>&1 | head -1);" \
        "slowhttptest $(dpkg-query -W -f='${Version}' slowhttptest 2>/dev/null); $(openssl version 2>&1 | awk '{ print $1, $2 }')$(
            [[ " $SCENARIOS " == *" S16 "* ]] && echo "; $(valgrind --version 2>&1)")"
    if [ "$PIN" = 1 ]; then
        echo "- mode: pinned (PIN=1): every server under \`taskset -c $PIN_SERVER_CPUS\`, every load tool" \
            "and the driver under \`taskset -c $PIN_LOAD_CPUS\`; servers size themselves from their" \
            "affinity mask ($(taskset -c "$PIN_SERVER_CPUS" nproc) CPU(s)); ratios are per core"
    else
        echo "- mode: shared (PIN=0): servers and load tools unpinned, sharing all $CORES cores"
    fi
    echo "- settings: QUICK=$QUICK, $REPS repetition(s) (median), ${DUR}s wrk runs, S6 ${S6_SECS}s x $S6_REPS," \
        "S3 $S3_CONNS connections, S4 $S4_N requests, S15 $S15_CONNS sockets, S16 N1 $S16_N; every server fresh for every" \
        "repetition; ratios are to $REFERENCE in this run, in S11-S13 to $TLS_REFERENCE, in S14-S15 to" \
        "$WS_REFERENCE (for latency, threads, RSS, time, CPU per handshake and context switches per" \
        "message: lower is better)"
    local rev dirty
    rev=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null)
    dirty=$(git -C "$HERE/.." status --porcelain -- src Cargo.toml 2>/dev/null | wc -l)
    echo "- ours built from commit $rev$([ "$dirty" != 0 ] && echo " plus $dirty uncommitted change(s) in src/ or Cargo.toml")"
    echo "- ports: $(for s in $SERVERS; do printf '%s %s, ' "$s" "${PORT[$s]}"; done | sed 's/, $//')$(
        [[ " $SCENARIOS " == *" S15 "* ]] && [[ " $SERVERS " != *" ours "* ]] && echo " (and ours ${PORT[ours]}, S15's comparison row)")"
    echo
}

# Two runs at once would share ports and cores and spoil each other's figures:
# wait (bounded) for any other run to finish.
take_lock() {
    local lock=${BENCH_LOCK:-/tmp/astra-bench.lock} wait=${BENCH_LOCK_WAIT:-3600}
    exec 9>>"$lock"
    if ! flock -n 9; then
        log "another bench/run.sh holds $lock; waiting up to ${wait}s"
        if ! flock -w "$wait" 9; then
            log "still busy after ${wait}s; giving up"
            exit 1
        fi
    fi
}

main() {
    take_lock
    install_tools
    build
    make_cert
    raise_fd_limit
    if [ "$PIN" = 1 ]; then
        # The driver's own sleeps, awks and curls go with the load tools, off the
        # servers' CPU(s); the build above had every core.
        taskset -cp "$PIN_LOAD_CPUS" $$ >/dev/null
        log "pinned: servers on CPU(s) $PIN_SERVER_CPUS, load tools on $PIN_LOAD_CPUS"
    fi
    LOAD_BEFORE=$(cat /proc/loadavg)
    log "logs in $LOGDIR"
    local sc
    for sc in $SCENARIOS; do
        run_scenario "$sc"
    done
    local load_after
    load_after=$(cat /proc/loadavg)
    {
        header
        for sc in $SCENARIOS; do print_scenario "$sc"; done
        echo "Load average after: $load_after"
    } | tee "$REPORT"
    log "report: $REPORT"
}

trap 'stop_server; exit 130' INT TERM
main
