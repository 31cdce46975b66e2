# bench/lib.sh: helpers shared by bench/run, bench/tls, bench/profile, bench/floor and bench/pgo/train
# (sourced, not run).
#
#   BENCH=...; ROOT=...; LOG_TAG=bench; . "$BENCH/lib.sh"
#
# Before sourcing, a script may set LOG_TAG (the prefix of log lines), INSTALL (1: install what
# is missing with apt-get; 0: fail instead) and KEEP_TMP (1: keep the temp dir on exit). After
# sourcing it calls `bench_tmp NAME` (sets TMP) and `bench_traps` (stop everything on exit).
# Every process a script starts goes into STARTED (`STARTED+=("$!")`); cleanup stops each by
# pid (TERM, then KILL after 5 s), never by name. If OUT is a directory at exit, the processes'
# own output (*.out, *.err, *error.log in TMP) is copied to OUT/logs.
# Everything listens on 127.0.0.1.

: "${BENCH:?set BENCH before sourcing bench/lib.sh}"
: "${ROOT:=$(dirname "$BENCH")}"
: "${LOG_TAG:=bench}"
: "${INSTALL:=1}"
: "${KEEP_TMP:=0}"
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install what is missing
APT_UPDATED=0
apt_install() { # apt_install PACKAGE...
    [ "$INSTALL" = 1 ] || die "missing $* (run without --no-install to install it)"
    command -v apt-get >/dev/null || die "missing $* and no apt-get"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
need_cmd() { # need_cmd COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || apt_install "$2"
}

# ---------------------------------------------------------------- temp dir, processes, cleanup
bench_tmp() { # bench_tmp NAME: sets TMP to a fresh directory, on tmpfs when there is one
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then TMP=$(mktemp -d "/dev/shm/$1.XXXXXX"); else TMP=$(mktemp -d "/tmp/$1.XXXXXX"); fi
    chmod 0755 "$TMP"   # nginx workers may run as another user (www-data)
}

declare -a STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]+"${STARTED[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]+"${STARTED[@]}"}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ -n "${TMP:-}" ] || return 0
    # keep every process's own output (startup errors, warnings) beside the raw data
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        mkdir -p "$OUT/logs"
        cp "$TMP"/*.out "$TMP"/*.err "$TMP"/*error.log "$OUT/logs/" 2>/dev/null || true
    fi
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
bench_traps() {
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
}

forget() { # forget PID: drop it from STARTED
    local keep=() p
    for p in "${STARTED[@]+"${STARTED[@]}"}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    STARTED=("${keep[@]+"${keep[@]}"}")
}
stop_pid() { # stop_pid PID: TERM, wait up to 5 s, KILL
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}
children() { pgrep -P "$1" 2>/dev/null | tr '\n' ' ' || true; }
set_affinity() { # set_affinity CPUS ROOTPID: every thread of the process and its children
    local p
    for p in "$2" $(children "$2"); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true; done
}

# ---------------------------------------------------------------- building
build_loadgen() { # build_loadgen: bench/loadgen's release binaries (loadgen, relay)
    # From the tree, so that .cargo/config.toml's flags apply to the relay as to Apex; without
    # Apex's profile (APEX_PGO=0, bench/pgo/rustc): it is Apex's, trained on Apex's code.
    (cd "$ROOT" && env -u CARGO_TARGET_DIR APEX_PGO=0 cargo build --release -q --manifest-path "$BENCH/loadgen/Cargo.toml") >&2 \
        || die "building bench/loadgen failed"
}

# ---------------------------------------------------------------- ports
# The first free ports at or above a start (below the ephemeral range); other people's servers
# may be listening on this machine, so each is checked before use.
port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
free_port() { # free_port START: first port >= START with no listener
    local p=$1
    while port_busy "$p"; do p=$((p + 1)); done
    echo "$p"
}

# ---------------------------------------------------------------- configs
render() { # render TEMPLATE OUT WORKERS: fill in @TMP@ @UPSTREAM_PORT@ @PROXY_PORT@ @WORKERS@ @NOFILE@
    sed -e "s#@TMP@#$TMP#g" -e "s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" -e "s#@PROXY_PORT@#${PROXY_PORT:-0}#g" \
        -e "s#@WORKERS@#$3#g" -e "s#@NOFILE@#${NOFILE:-4096}#g" "$1" > "$2"
}
apex_config() { # apex_config LISTEN_PORT WORKERS UPSTREAM_PORT: bench/apex.toml with only those rewritten, on stdout
    sed -e "s#^listen = .*#listen = [\"127.0.0.1:$1\"]#" \
        -e "s#^workers = [0-9]*#workers = $2#" \
        -e "s#^servers = .*#servers = [\"127.0.0.1:$3\"]#" "$BENCH/apex.toml"
}
make_cert() { # make_cert NAME: self-signed ECDSA P-256 for NAME in TMP (cert.pem, key.pem, cert-and-key.pem)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj "/CN=$1" -addext "subjectAltName=DNS:$1" \
        > "$TMP/openssl.out" 2>&1 || { cat "$TMP/openssl.out" >&2; die "openssl could not make the certificate"; }
    cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/cert-and-key.pem"   # HAProxy's crt: both in one file
    chmod 0644 "$TMP"/*.pem
}

# ---------------------------------------------------------------- readiness
http_ready() { # http_ready SCHEME PORT [PID]: wait up to 15 s for a 200 on GET / (gives up if PID exits)
    local code
    for _ in $(seq 150); do
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$1://127.0.0.1:$2/" 2>/dev/null || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}
apex_listening() { # apex_listening PID STDOUT_FILE [PATTERN] [SECONDS]: wait (10 s) for Apex's "listening" line
    local pat=${3:-^apex: listening on}
    for _ in $(seq $(( ${4:-10} * 10 ))); do
        grep -q "$pat" "$2" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    grep -q "$pat" "$2" 2>/dev/null
}

# ---------------------------------------------------------------- the upstream
start_upstream() { # start_upstream [CPU]: the nginx of conf/upstream-nginx.conf on UPSTREAM_PORT; sets UP_PID
    local pin=()
    [ -n "${1:-}" ] && pin=(taskset -c "$1")
    mkdir -p "$TMP/www/upload" "$TMP/up"
    chmod 0777 "$TMP/www" "$TMP/www/upload"
    render "$BENCH/conf/upstream-nginx.conf" "$TMP/upstream.conf" 1
    nginx -t -q -p "$TMP/up" -c "$TMP/upstream.conf" -e "$TMP/upstream-error.log" 2>/dev/null \
        || nginx -t -p "$TMP/up" -c "$TMP/upstream.conf" -e "$TMP/upstream-error.log" >&2 || die "upstream nginx config invalid"
    "${pin[@]}" nginx -p "$TMP/up" -c "$TMP/upstream.conf" -e "$TMP/upstream-error.log" > "$TMP/upstream.out" 2>&1 &
    UP_PID=$!
    STARTED+=("$UP_PID")
    http_ready http "$UPSTREAM_PORT" "$UP_PID" || { cat "$TMP/upstream.out" "$TMP/upstream-error.log" >&2 || true; die "upstream nginx did not start on port $UPSTREAM_PORT"; }
    [ -n "${1:-}" ] && set_affinity "$1" "$UP_PID"
    return 0
}

# ---------------------------------------------------------------- measuring (bench/measure.py)
M() { python3 "$BENCH/measure.py" "$@"; }
# Waiting for a quiet machine is bounded per measurement (QUIET_WAIT) and per run
# (QUIET_BUDGET seconds in all); once the budget is spent each check samples once and only
# records how busy the machine was, so a machine that stays busy cannot stretch the run.
QUIET_SPENT=0
quiet() { # sets Q to the check's JSON (not in a subshell: QUIET_SPENT must persist)
    local left
    left=$(awk -v b="$QUIET_BUDGET" -v s="$QUIET_SPENT" -v w="$QUIET_WAIT" 'BEGIN { l = b - s; if (l > w) l = w; if (l < 0) l = 0; print l }')
    Q=$(M quiet --min-idle 80 --max-wait "$left" --sample "$QUIET_SAMPLE")
    QUIET_SPENT=$(awk -v s="$QUIET_SPENT" -v q="$Q" -v one="$QUIET_SAMPLE" 'BEGIN {
        match(q, /"waited_s": [0-9.]+/); w = substr(q, RSTART + 12, RLENGTH - 12) - one
        print s + (w > 0 ? w : 0) }')  # the first sample is not waiting
}
