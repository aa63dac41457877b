#!/usr/bin/env bash
# TrendStory replicas on one machine behind nginx, the same routing as in Kubernetes.
#
#   scripts/cluster.sh up N [--port P] [--base-port B] [--config FILE] [--binary PATH | --image IMAGE]
#                        [--with-prometheus [--prometheus-port Q] [--scrape-interval D]]
#   scripts/cluster.sh status              replicas, their pids, ports and /readyz; nginx
#                                          and Prometheus
#   scripts/cluster.sh stop I [SIGNAL]     signal replica I (TERM by default; KILL to crash it)
#   scripts/cluster.sh start I             start replica I again, as `up` did, and wait until ready
#   scripts/cluster.sh down                stop every process this script started, nothing else
#
# `up` starts N replicas of one binary with one shared config (--config, or the defaults),
# on 127.0.0.1:B+1..B+N (B = 18100), and nginx on 127.0.0.1:P (8080); it waits until each
# replica is ready. Environment variables reach the replicas (TRENDSTORY_MODEL__DIR=...,
# ORT_DYLIB_PATH=...); per replica only server.host and server.port are set, and, unless
# set already, inference.threads_per_worker and server.http_workers share the cores and
# server.log_format is json.
#
# --image runs each replica as a container of that image with podman instead (e.g. the name
# `scripts/image.sh podman` prints): as Kubernetes runs it (read-only root, its non-root
# user), on the host's network, with the TRENDSTORY_* environment; TRENDSTORY_MODEL__DIR, if
# set, and --config are mounted read-only where the image expects them (/models/current,
# /etc/trendstory/trendstory.toml). stop/start/down signal the server inside by its pid as
# for a binary. podman runs with scripts/podman/containers.conf unless CONTAINERS_CONF is set.
#
# Routing (scripts/cluster-nginx.conf.in): GET /v1/stories?topic= by consistent hash of the
# topic, so one replica's story cache and coalescing serve every client of that topic; all
# else round robin. A replica that refuses connections, times out or answers 502/503
# (draining, warming up) is skipped for the request and left out for fail_timeout, then
# tried again (passive checks). Responses carry X-Upstream: the replica(s) nginx tried.
#
# --with-prometheus also starts Prometheus (Debian package) on 127.0.0.1:Q (9090), scraping
# every replica each D (15s) with the labels it has in Kubernetes (job="trendstory",
# namespace="local", pod="replica-I"), and evaluating the alert rules of k8s/monitoring
# (scripts/cluster-prometheus.yml.in); its data starts empty at each `up`.
#
# State (pids, logs, nginx.conf, prometheus.yml and its data) lives in $CLUSTER_STATE_DIR
# (default target/cluster). Needs nginx (and prometheus; Debian packages) and curl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CLUSTER_STATE_DIR:-$ROOT/target/cluster}"
READY_TIMEOUT="${CLUSTER_READY_TIMEOUT:-120}"
# Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
PROMETHEUS="$(command -v prometheus || echo /usr/bin/prometheus)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/scripts/podman/containers.conf}"

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

# The pid in $1 if that process is alive and its command line contains $2 (so a pid the
# system reused for another program is never signalled).
owned_pid() {
    local file="$1" marker="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
    echo "$pid"
}

replica_port() { echo $(( $(cat "$STATE/base-port") + $1 )); }

# The server's path inside the image: what a replica's command line holds in --image mode.
IMAGE_BINARY=/usr/local/bin/trendstory

# The HTTP status of GET $1 ("000" when nothing answers).
http_code() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
}

readyz() {
    http_code "http://127.0.0.1:$1/readyz"
}

# Waits until GET $1 answers 200: wait_http URL PIDFILE MARKER NAME LOG. Dies when the
# process of PIDFILE (its command line holding MARKER) exits, or after READY_TIMEOUT.
wait_http() {
    local url="$1" pidfile="$2" marker="$3" name="$4" log="$5" deadline
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until [[ "$(http_code "$url")" == 200 ]]; do
        owned_pid "$pidfile" "$marker" >/dev/null || die "$name exited; its log: $log"
        (( $(date +%s) < deadline )) || die "$name not ready after ${READY_TIMEOUT}s"
        sleep 0.2
    done
}

start_replica() {
    local i="$1" port binary config
    port="$(replica_port "$i")"
    binary="$(cat "$STATE/binary")"
    config="$(cat "$STATE/config")"
    if owned_pid "$STATE/replica-$i.pid" "$binary" >/dev/null; then
        die "replica $i is running already"
    fi
    if [[ -n "$(cat "$STATE/image")" ]]; then
        start_container "$i" "$port" "$config"
        return
    fi
    local args=()
    [[ -n "$config" ]] && args=(--config "$config")
    (
        # shellcheck source=/dev/null
        source "$STATE/env.sh"
        export TRENDSTORY_SERVER__HOST=127.0.0.1 TRENDSTORY_SERVER__PORT="$port"
        # setsid: the replica outlives this shell and ignores its terminal's signals.
        exec setsid "$binary" "${args[@]}" serve >> "$STATE/replica-$i.log" 2>&1 < /dev/null
    ) &
    echo $! > "$STATE/replica-$i.pid"
    echo "cluster.sh: replica $i: pid $!, 127.0.0.1:$port, log $STATE/replica-$i.log"
}

# Replica I as a container of $STATE/image; its pid file holds the server's pid on this host.
start_container() {
    local i="$1" port="$2" config="$3" name="trendstory-replica-$i" image pid deadline
    image="$(cat "$STATE/image")"
    (
        # shellcheck source=/dev/null
        source "$STATE/env.sh"
        export TRENDSTORY_SERVER__HOST=127.0.0.1 TRENDSTORY_SERVER__PORT="$port"
        run=(podman run --rm --replace --name "$name" --network host --read-only
             --cap-drop ALL --security-opt no-new-privileges)
        if [[ -n "${TRENDSTORY_MODEL__DIR:-}" ]]; then
            run+=(--volume "$(realpath "$TRENDSTORY_MODEL__DIR"):/models/current:ro")
            export TRENDSTORY_MODEL__DIR=/models/current
        fi
        [[ -n "$config" ]] && run+=(--volume "$config:/etc/trendstory/trendstory.toml:ro")
        # The attached client writes the server's output to the log as a binary's would.
        exec setsid "${run[@]}" --env 'TRENDSTORY_*' "$image" serve \
            >> "$STATE/replica-$i.log" 2>&1 < /dev/null
    ) &
    deadline=$(( $(date +%s) + 60 ))
    until pid="$(podman inspect --format '{{.State.Pid}}' "$name" 2>/dev/null)" &&
            [[ "$pid" =~ ^[1-9][0-9]*$ ]]; do
        (( $(date +%s) < deadline )) || die "replica $i: no container after 60 s; its log: $STATE/replica-$i.log"
        sleep 0.2
    done
    echo "$pid" > "$STATE/replica-$i.pid"
    echo "cluster.sh: replica $i: container $name (server pid $pid), 127.0.0.1:$port, log $STATE/replica-$i.log"
}

wait_ready() {
    local i="$1"
    wait_http "http://127.0.0.1:$(replica_port "$i")/readyz" "$STATE/replica-$i.pid" \
        "$(cat "$STATE/binary")" "replica $i" "$STATE/replica-$i.log"
}

# Writes scripts/$1 to $2 with each @KEY@ replaced by its value: fill_template IN OUT KEY VALUE...
fill_template() {
    local text out="$2"
    text="$(cat "$ROOT/scripts/$1")"
    shift 2
    while [[ $# -gt 1 ]]; do
        text="${text//"@$1@"/$2}"
        shift 2
    done
    printf '%s\n' "$text" > "$out"
}

write_nginx_conf() {
    local n="$1" port="$2" servers="" i
    for i in $(seq 1 "$n"); do
        servers+="        server 127.0.0.1:$(replica_port "$i") max_fails=1 fail_timeout=5s;"$'\n'
    done
    mkdir -p "$STATE/nginx-tmp"
    fill_template cluster-nginx.conf.in "$STATE/nginx.conf" STATE "$STATE" PORT "$port" SERVERS "$servers"
}

write_prometheus_conf() {
    local n="$1" interval="$2" targets="" i
    for i in $(seq 1 "$n"); do
        targets+="      - targets: [\"127.0.0.1:$(replica_port "$i")\"]"$'\n'
        targets+="        labels: {namespace: local, pod: replica-$i}"$'\n'
    done
    fill_template cluster-prometheus.yml.in "$STATE/prometheus.yml" INTERVAL "$interval" \
        RULES "$ROOT/k8s/monitoring/alerts.rules.yaml" TARGETS "$targets"
}

start_prometheus() {
    local port="$1"
    rm -rf "$STATE/prometheus-data"
    setsid "$PROMETHEUS" --config.file="$STATE/prometheus.yml" \
        --storage.tsdb.path="$STATE/prometheus-data" \
        --web.listen-address="127.0.0.1:$port" \
        >> "$STATE/prometheus.log" 2>&1 < /dev/null &
    echo $! > "$STATE/prometheus.pid"
    wait_http "http://127.0.0.1:$port/-/ready" "$STATE/prometheus.pid" "$STATE/prometheus.yml" \
        prometheus "$STATE/prometheus.log"
    echo "cluster.sh: prometheus on http://127.0.0.1:$port, log $STATE/prometheus.log"
}

cmd_up() {
    local n="${1:-}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: cluster.sh up N [--port P] [--base-port B] [--config FILE] [--binary PATH] [--with-prometheus [--prometheus-port Q] [--scrape-interval D]]"
    shift
    local port=8080 base=18100 config="" binary="" image=""
    local prometheus="" prometheus_port=9090 interval=15s
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) port="$2"; shift 2 ;;
            --base-port) base="$2"; shift 2 ;;
            --config) config="$(realpath "$2")"; shift 2 ;;
            --binary) binary="$(realpath "$2")"; shift 2 ;;
            --image) image="$2"; shift 2 ;;
            --with-prometheus) prometheus=1; shift ;;
            --prometheus-port) prometheus_port="$2"; shift 2 ;;
            --scrape-interval) interval="$2"; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    [[ -x "$NGINX" ]] || die "nginx is not installed (apt-get install nginx, or scripts/deploy-tools.sh)"
    if [[ -n "$prometheus" ]]; then
        [[ -x "$PROMETHEUS" ]] ||
            die "prometheus is not installed (apt-get install prometheus, or scripts/deploy-tools.sh)"
        [[ "$interval" =~ ^[1-9][0-9]*(ms|s|m)$ ]] || die "--scrape-interval: a duration such as 15s, not $interval"
    fi
    command -v curl >/dev/null || die "curl is not installed"
    if [[ -n "$image" ]]; then
        [[ -z "$binary" ]] || die "--binary or --image, not both"
        command -v podman >/dev/null || die "podman is not installed (scripts/deploy-tools.sh)"
        podman image exists "$image" || die "no image $image (scripts/image.sh podman builds one)"
        binary="$IMAGE_BINARY"
    else
        if [[ -z "$binary" ]]; then
            binary="$ROOT/target/release/trendstory"
            [[ -x "$binary" ]] || binary="$ROOT/target/debug/trendstory"
        fi
        [[ -x "$binary" ]] || die "no binary at $binary: cargo build --release (or --binary PATH)"
    fi
    [[ -z "$config" || -f "$config" ]] || die "no config file $config"
    if [[ -f "$STATE/replicas" ]]; then
        die "a cluster is up already in $STATE (cluster.sh down first)"
    fi
    mkdir -p "$STATE"
    # A failed `up` stops whatever it had started.
    trap '[[ "${UP_DONE:-}" == 1 ]] || { echo "cluster.sh: up failed: stopping what it started" >&2; cmd_down; }' EXIT
    rm -f "$STATE"/replica-*.log "$STATE"/access.log "$STATE"/nginx-error.log "$STATE"/prometheus.log
    echo "$n" > "$STATE/replicas"
    echo "$base" > "$STATE/base-port"
    echo "$port" > "$STATE/port"
    echo "$binary" > "$STATE/binary"
    echo "$image" > "$STATE/image"
    echo "$config" > "$STATE/config"
    # One shared configuration: the file plus this environment, kept for `start`.
    local cores threads
    cores="$(nproc)"
    threads=$(( cores / n ))
    (( threads >= 1 )) || threads=1
    {
        export -p | grep -E '^declare -x (TRENDSTORY_|ORT_DYLIB_PATH=|RUST_LOG=)' |
            sed 's/^declare -x /export /' || true
        [[ -n "${TRENDSTORY_INFERENCE__THREADS_PER_WORKER:-}" ]] ||
            echo "export TRENDSTORY_INFERENCE__THREADS_PER_WORKER=$threads"
        [[ -n "${TRENDSTORY_SERVER__HTTP_WORKERS:-}" ]] ||
            echo "export TRENDSTORY_SERVER__HTTP_WORKERS=$threads"
        [[ -n "${TRENDSTORY_SERVER__LOG_FORMAT:-}" ]] ||
            echo "export TRENDSTORY_SERVER__LOG_FORMAT=json"
        [[ -n "${ORT_DYLIB_PATH:-}" ]] ||
            echo "export ORT_DYLIB_PATH=$ROOT/.cache/onnxruntime/libonnxruntime.so.1.32.0"
    } > "$STATE/env.sh"
    local i
    for i in $(seq 1 "$n"); do
        start_replica "$i"
    done
    write_nginx_conf "$n" "$port"
    "$NGINX" -t -q -p "$STATE" -c "$STATE/nginx.conf" || die "nginx rejected $STATE/nginx.conf"
    "$NGINX" -p "$STATE" -c "$STATE/nginx.conf"
    for i in $(seq 1 "$n"); do
        wait_ready "$i"
    done
    if [[ -n "$prometheus" ]]; then
        write_prometheus_conf "$n" "$interval"
        start_prometheus "$prometheus_port"
    fi
    UP_DONE=1
    echo "cluster.sh: $n replicas ready behind http://127.0.0.1:$port"
}

cmd_status() {
    [[ -f "$STATE/replicas" ]] || { echo "cluster.sh: no cluster in $STATE"; return 0; }
    local n binary i pid port
    n="$(cat "$STATE/replicas")"
    binary="$(cat "$STATE/binary")"
    printf '%-9s %-8s %-17s %s\n' replica pid address readyz
    for i in $(seq 1 "$n"); do
        port="$(replica_port "$i")"
        if pid="$(owned_pid "$STATE/replica-$i.pid" "$binary")"; then
            printf '%-9s %-8s %-17s %s\n' "$i" "$pid" "127.0.0.1:$port" "$(readyz "$port")"
        else
            printf '%-9s %-8s %-17s %s\n' "$i" "-" "127.0.0.1:$port" "stopped"
        fi
    done
    if pid="$(owned_pid "$STATE/nginx.pid" "$STATE/nginx.conf")"; then
        echo "nginx     $pid 127.0.0.1:$(cat "$STATE/port") (log $STATE/access.log)"
    else
        echo "nginx     stopped"
    fi
    if pid="$(owned_pid "$STATE/prometheus.pid" "$STATE/prometheus.yml")"; then
        echo "prometheus $pid (log $STATE/prometheus.log)"
    fi
}

cmd_stop() {
    local i="${1:-}" signal="${2:-TERM}" pid
    [[ -f "$STATE/replicas" ]] || die "no cluster in $STATE"
    [[ "$i" =~ ^[0-9]+$ ]] || die "usage: cluster.sh stop I [SIGNAL]"
    pid="$(owned_pid "$STATE/replica-$i.pid" "$(cat "$STATE/binary")")" ||
        die "replica $i is not running"
    kill -s "$signal" "$pid"
    echo "cluster.sh: sent SIG$signal to replica $i (pid $pid)"
}

cmd_start() {
    local i="${1:-}"
    [[ -f "$STATE/replicas" ]] || die "no cluster in $STATE"
    [[ "$i" =~ ^[0-9]+$ ]] && (( i >= 1 && i <= $(cat "$STATE/replicas") )) ||
        die "usage: cluster.sh start I (1..$(cat "$STATE/replicas"))"
    start_replica "$i"
    wait_ready "$i"
    echo "cluster.sh: replica $i ready"
}

cmd_down() {
    [[ -f "$STATE/replicas" ]] || { echo "cluster.sh: no cluster in $STATE"; return 0; }
    local n binary i pid pids=()
    n="$(cat "$STATE/replicas")"
    binary="$(cat "$STATE/binary")"
    if pid="$(owned_pid "$STATE/nginx.pid" "$STATE/nginx.conf")"; then
        kill -QUIT "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
    if pid="$(owned_pid "$STATE/prometheus.pid" "$STATE/prometheus.yml")"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
    for i in $(seq 1 "$n"); do
        if pid="$(owned_pid "$STATE/replica-$i.pid" "$binary")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # Replicas drain (server.shutdown_drain_secs) and finish streams before they exit.
    local deadline=$(( $(date +%s) + 60 ))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && (( $(date +%s) < deadline )); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "cluster.sh: pid $pid still running after 60 s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$STATE/replicas" "$STATE"/replica-*.pid "$STATE/nginx.pid" "$STATE/prometheus.pid"
    echo "cluster.sh: down (logs kept in $STATE)"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    status) cmd_status ;;
    stop) shift; cmd_stop "$@" ;;
    start) shift; cmd_start "$@" ;;
    down) cmd_down ;;
    *) die "usage: cluster.sh up N [options] | status | stop I [SIGNAL] | start I | down" ;;
esac
