#!/usr/bin/env bash
# Local clusters for tributary's cluster tests, beside the single-node
# services of scripts/services.sh (RabbitMQ on 5672 and Redis on 6379 are
# left alone):
#   - a 3-node RabbitMQ cluster rmqa@localhost, rmqb@localhost and
#     rmqc@localhost, AMQP on 127.0.0.1:5701-5703 (distribution ports
#     25701-25703), guest allowed over loopback;
#   - a Redis Cluster of 3 masters and 3 replicas on 127.0.0.1:7000-7005
#     (no persistence, cluster-node-timeout 2000 ms).
# Their config, data and logs live under ${TRIBUTARY_CLUSTER_DIR:-/tmp/tributary-clusters}.
# Run as root (the RabbitMQ nodes run as the rabbitmq user, whose Erlang
# cookie rabbitmqctl uses); needs the rabbitmq-server and redis-server packages.
#
# Usage:
#   scripts/clusters.sh up [rabbitmq|redis]    start (both by default); does nothing
#                                              if already healthy, re-creates a
#                                              half-started or broken one
#   scripts/clusters.sh down [rabbitmq|redis]  stop every node and delete its state
#   scripts/clusters.sh status                 report; exit 0 if both are healthy
#   scripts/clusters.sh urls                   print AMQP_URLS=... and REDIS_URLS=...
#   scripts/clusters.sh rabbitmq-stop-app a|b|c    rabbitmqctl stop_app on that node
#   scripts/clusters.sh rabbitmq-start-app a|b|c   rabbitmqctl start_app on that node
#   scripts/clusters.sh rabbitmq-watermark a|b|c FRACTION
#                                              set_vm_memory_high_watermark on that node
#                                              (0.0001 raises the cluster-wide memory
#                                              alarm; 0.4 is the default again)
#   scripts/clusters.sh redis-kill PORT        SIGKILL the redis-server on PORT
#   scripts/clusters.sh redis-restart PORT     start it again with its config (it
#                                              rejoins, as a replica after a failover)
#   scripts/clusters.sh redis-master-of KEY    print host:port of the master of KEY's slot

set -euo pipefail

CLUSTERS_DIR=${TRIBUTARY_CLUSTER_DIR:-/tmp/tributary-clusters}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
CLUSTERS_HOST=127.0.0.1
RMQ_NODES=(a b c)
RMQ_USER=rabbitmq
REDIS_PORTS=(7000 7001 7002 7003 7004 7005)
# Seconds to wait for one RabbitMQ node to boot, and for the Redis Cluster
# to be ok with its replicas attached.
RMQ_BOOT_TIMEOUT=120
REDIS_READY_TIMEOUT=30

log() {
    printf 'clusters: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

# Prints the path of executable $1, looking first in RabbitMQ's own bin
# directory (the /usr/sbin wrappers of the Debian package su by themselves
# and send rabbitmq-server's output to the system node's startup_log), then
# in PATH and the sbin directories often missing from it.
find_bin() {
    local dir
    for dir in /usr/lib/rabbitmq/bin /usr/lib/rabbitmq/sbin; do
        if [[ -x "$dir/$1" ]]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    if command -v "$1" 2>/dev/null; then
        return 0
    fi
    for dir in /usr/sbin /usr/local/sbin /sbin; do
        if [[ -x "$dir/$1" ]]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

need_bin() {
    find_bin "$1" || die "$1 not found; install it with 'apt-get install ${2}'"
}

port_open() {
    timeout 2 bash -c "</dev/tcp/$CLUSTERS_HOST/$1" 2>/dev/null
}

# ---------------------------------------------------------------- RabbitMQ

rmq_port() {
    case $1 in
    a) echo 5701 ;;
    b) echo 5702 ;;
    c) echo 5703 ;;
    *) die "unknown RabbitMQ node '$1' (a, b or c)" ;;
    esac
}

rmq_name() {
    printf 'rmq%s@localhost\n' "$1"
}

rmq_dir() {
    printf '%s/rabbitmq/rmq%s\n' "$CLUSTERS_DIR" "$1"
}

# Runs a command as the rabbitmq user (as is when already that user), from /
# so that the Erlang VM never starts in a directory it cannot read.
as_rabbitmq() {
    if [[ $(id -un) == "$RMQ_USER" ]]; then
        (cd / && "$@")
    else
        (cd / && runuser -u "$RMQ_USER" -- "$@")
    fi
}

# rmqctl NODE ARGS...: rabbitmqctl against node NODE (a, b or c).
rmqctl() {
    local node=$1
    shift
    as_rabbitmq "$RABBITMQCTL" -q -n "$(rmq_name "$node")" "$@"
}

# True if epmd knows node NODE (its Erlang VM is running), without starting
# a VM of our own.
rmq_registered() {
    "$EPMD" -names 2>/dev/null | grep -q "^name rmq$1 at port "
}

# Pids of the processes of node NODE: those of the rabbitmq user started
# with RABBITMQ_NODENAME=rmqNODE@localhost in their environment (the
# rabbitmq-server shell and its Erlang VM, whose command line does not name
# the node).
rmq_pids() {
    local f pid
    while IFS= read -r f; do
        pid=${f#/proc/}
        pid=${pid%/environ}
        if [[ $(stat -c %U "/proc/$pid" 2>/dev/null) == "$RMQ_USER" ]]; then
            printf '%s\n' "$pid"
        fi
    done < <(grep -lzx "RABBITMQ_NODENAME=$(rmq_name "$1")" /proc/[0-9]*/environ 2>/dev/null)
}

rmq_healthy() {
    local n status running
    for n in "${RMQ_NODES[@]}"; do
        port_open "$(rmq_port "$n")" || return 1
    done
    status=$(timeout 30 bash "$SELF" _rmqctl a cluster_status --formatter json 2>/dev/null) || return 1
    running=$(grep -o '"running_nodes":\[[^]]*\]' <<<"$status") || return 1
    for n in "${RMQ_NODES[@]}"; do
        [[ $running == *"\"$(rmq_name "$n")\""* ]] || return 1
    done
    if ! grep -q '"alarms":\[\]' <<<"$status"; then
        log "rabbitmq: resource alarm raised: $(grep -o '"alarms":\[[^]]*\]' <<<"$status")"
    fi
}

rmq_report() {
    local n
    if rmq_healthy; then
        log "rabbitmq: up (rmqa, rmqb, rmqc running, AMQP on $CLUSTERS_HOST:5701-5703)"
        return 0
    fi
    for n in "${RMQ_NODES[@]}"; do
        if ! rmq_registered "$n"; then
            log "rabbitmq: $(rmq_name "$n") is not running"
        elif ! port_open "$(rmq_port "$n")"; then
            log "rabbitmq: $(rmq_name "$n") runs but does not accept AMQP on $(rmq_port "$n") (app stopped?)"
        fi
    done
    log "rabbitmq: DOWN or not clustered"
    return 1
}

# Starts node NODE in the background: a foreground rabbitmq-server in its
# own session (setsid), as the rabbitmq user.
rmq_launch() {
    local n=$1 port dir pid
    port=$(rmq_port "$n")
    dir=$(rmq_dir "$n")
    mkdir -p "$dir/mnesia" "$dir/log"
    # Its own config: the system one pins listeners.tcp.local to 5672.
    printf 'listeners.tcp.local = %s:%s\nloopback_users = none\n' "$CLUSTERS_HOST" "$port" >"$dir/rabbitmq.conf"
    printf '[].\n' >"$dir/enabled_plugins"
    chown -R "$RMQ_USER:$RMQ_USER" "$dir"
    # shellcheck disable=SC2016 # $1, $2 and $! are the inner shell's
    pid=$(as_rabbitmq env \
        RABBITMQ_NODENAME="$(rmq_name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS="$CLUSTERS_HOST" \
        RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$((port + 20000))" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/pid" \
        bash -c 'setsid nohup "$1" >"$2" 2>&1 </dev/null 9>&- & echo $!' \
        launch "$RABBITMQ_SERVER" "$dir/out.log")
    log "rabbitmq: started $(rmq_name "$n") (AMQP $port, distribution $((port + 20000)), pid $pid)"
}

# Waits until node NODE has booted (its app running).
rmq_await() {
    local n=$1 dir waited=0
    dir=$(rmq_dir "$n")
    until rmq_registered "$n"; do
        if [[ -z $(rmq_pids "$n") ]]; then
            log "rabbitmq: $(rmq_name "$n") exited while starting; last lines of $dir/out.log:"
            tail -n 20 "$dir/out.log" >&2 || true
            return 1
        fi
        if ((waited >= RMQ_BOOT_TIMEOUT * 2)); then
            log "rabbitmq: $(rmq_name "$n") did not register with epmd in ${RMQ_BOOT_TIMEOUT}s"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rmqctl "$n" await_startup --timeout "$RMQ_BOOT_TIMEOUT" || {
        log "rabbitmq: $(rmq_name "$n") did not boot; see $dir/log and $dir/out.log"
        return 1
    }
}

rmq_up_begin() {
    if rmq_healthy; then
        log "rabbitmq: already up and clustered"
        RMQ_STARTED=0
        return 0
    fi
    rmq_down_quiet
    log "rabbitmq: starting 3 nodes under $CLUSTERS_DIR/rabbitmq"
    mkdir -p "$CLUSTERS_DIR/rabbitmq"
    if ! as_rabbitmq test -w "$CLUSTERS_DIR/rabbitmq" 2>/dev/null; then
        chown "$RMQ_USER:$RMQ_USER" "$CLUSTERS_DIR/rabbitmq"
        as_rabbitmq test -x "$CLUSTERS_DIR/rabbitmq" ||
            die "the rabbitmq user cannot reach $CLUSTERS_DIR; set TRIBUTARY_CLUSTER_DIR elsewhere"
    fi
    local n
    for n in "${RMQ_NODES[@]}"; do
        rmq_launch "$n"
    done
    RMQ_STARTED=1
}

rmq_up_finish() {
    local n
    ((RMQ_STARTED)) || return 0
    for n in "${RMQ_NODES[@]}"; do
        rmq_await "$n" || return 1
    done
    log "rabbitmq: 3 nodes booted (after $((SECONDS - UP_START))s); joining rmqb and rmqc to rmqa"
    for n in b c; do
        # join_cluster logs harmless errors about tracked connection tables.
        if ! { rmqctl "$n" stop_app && rmqctl "$n" join_cluster "$(rmq_name a)" &&
            rmqctl "$n" start_app; } >"$(rmq_dir "$n")/join.log" 2>&1; then
            log "rabbitmq: joining $(rmq_name "$n") failed:"
            tail -n 20 "$(rmq_dir "$n")/join.log" >&2
            log "rabbitmq: see also $(rmq_dir "$n")/log"
            return 1
        fi
    done
    if ! rmq_healthy; then
        log "rabbitmq: the cluster is not healthy after joining"
        return 1
    fi
    log "rabbitmq: up (rmqa, rmqb, rmqc; AMQP $CLUSTERS_HOST:5701-5703) after $((SECONDS - UP_START))s"
}

# Stops the nodes and deletes their state; says nothing when nothing runs.
rmq_down_quiet() {
    local n dir pids pidfile waited job jobs=()
    for n in "${RMQ_NODES[@]}"; do
        if rmq_registered "$n"; then
            dir=$(rmq_dir "$n")
            pidfile=()
            if [[ -f "$dir/pid" ]]; then
                pidfile=("$dir/pid")
            fi
            log "rabbitmq: stopping $(rmq_name "$n")"
            (timeout 60 bash "$SELF" _rmqctl "$n" stop "${pidfile[@]}" >/dev/null 2>&1 ||
                log "rabbitmq: rabbitmqctl stop of $(rmq_name "$n") failed") &
            jobs+=("$!")
        fi
    done
    for job in "${jobs[@]}"; do
        wait "$job" || true
    done
    # Wait for the VMs and their rabbitmq-server shells to exit; TERM, then
    # KILL, what is left (a node that would not stop, or did not boot).
    for n in "${RMQ_NODES[@]}"; do
        waited=0
        while pids=$(rmq_pids "$n") && [[ -n $pids ]]; do
            if ((waited == 10)); then
                log "rabbitmq: terminating what is left of $(rmq_name "$n"): $(tr '\n' ' ' <<<"$pids")"
                # shellcheck disable=SC2086 # one pid per word
                kill -TERM $pids 2>/dev/null || true
            elif ((waited == 30)); then
                # shellcheck disable=SC2086
                kill -KILL $pids 2>/dev/null || true
            elif ((waited > 50)); then
                log "rabbitmq: processes $(tr '\n' ' ' <<<"$pids")of $(rmq_name "$n") do not die"
                return 1
            fi
            sleep 0.5
            waited=$((waited + 1))
        done
        if rmq_registered "$n"; then
            log "rabbitmq: $(rmq_name "$n") is still registered with epmd"
            return 1
        fi
    done
    rm -rf "$CLUSTERS_DIR/rabbitmq"
}

rmq_down() {
    rmq_down_quiet
    log "rabbitmq: down"
}

# ------------------------------------------------------------------- Redis

redis_dir() {
    printf '%s/redis/%s\n' "$CLUSTERS_DIR" "$1"
}

redis_check_port() {
    local p
    for p in "${REDIS_PORTS[@]}"; do
        [[ $1 == "$p" ]] && return 0
    done
    die "unknown Redis Cluster port '$1' (${REDIS_PORTS[0]}-${REDIS_PORTS[-1]})"
}

rcli() {
    local port=$1
    shift
    timeout 5 "$REDIS_CLI" -h "$CLUSTERS_HOST" -p "$port" "$@"
}

redis_answers() {
    [[ $(rcli "$1" ping 2>/dev/null) == PONG ]]
}

# First port of the cluster that answers.
redis_any_port() {
    local p
    for p in "${REDIS_PORTS[@]}"; do
        if redis_answers "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# True if every node answers and says cluster_state:ok with all 6 nodes and
# 16384 slots known, there are 3 masters, and 3 replicas whose link to their
# master is up.
redis_healthy() {
    local p info masters=0 replicas=0
    for p in "${REDIS_PORTS[@]}"; do
        info=$(rcli "$p" cluster info 2>/dev/null) || return 1
        [[ $info == *cluster_state:ok* && $info == *cluster_slots_ok:16384* && $info == *cluster_known_nodes:6* ]] || return 1
        info=$(rcli "$p" info replication 2>/dev/null) || return 1
        if [[ $info == *role:master* ]]; then
            masters=$((masters + 1))
        elif [[ $info == *master_link_status:up* ]]; then
            replicas=$((replicas + 1))
        fi
    done
    ((masters == 3 && replicas == 3))
}

redis_report() {
    local p
    if redis_healthy; then
        log "redis: up (3 masters, 3 replicas, cluster_state:ok, $CLUSTERS_HOST:7000-7005)"
        return 0
    fi
    for p in "${REDIS_PORTS[@]}"; do
        if ! redis_answers "$p"; then
            log "redis: $CLUSTERS_HOST:$p does not answer"
        fi
    done
    if p=$(redis_any_port); then
        log "redis: as seen from $p: $(rcli "$p" cluster info 2>/dev/null | grep -E '^cluster_(state|known_nodes|size):' | tr -d '\r' | tr '\n' ' ')"
    fi
    log "redis: DOWN or not a healthy cluster"
    return 1
}

redis_write_config() {
    local p=$1 dir
    dir=$(redis_dir "$p")
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<EOF
bind $CLUSTERS_HOST
port $p
cluster-enabled yes
cluster-config-file $dir/nodes.conf
cluster-node-timeout 2000
dir $dir
save ""
appendonly no
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
EOF
}

redis_start_node() {
    local p=$1 dir
    dir=$(redis_dir "$p")
    "$REDIS_SERVER" "$dir/redis.conf" 9>&- || {
        log "redis: redis-server on $p failed to start; see $dir/redis.log"
        return 1
    }
}

redis_wait_answers() {
    local p=$1 waited=0
    until redis_answers "$p"; do
        if ((waited >= 20)); then
            log "redis: $CLUSTERS_HOST:$p did not answer within 10s; see $(redis_dir "$p")/redis.log"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

redis_up() {
    local p waited=0 addrs=()
    if redis_healthy; then
        log "redis: already up (3 masters, 3 replicas)"
        return 0
    fi
    redis_down_quiet
    log "redis: starting 6 nodes under $CLUSTERS_DIR/redis"
    for p in "${REDIS_PORTS[@]}"; do
        redis_write_config "$p"
        redis_start_node "$p"
        addrs+=("$CLUSTERS_HOST:$p")
    done
    for p in "${REDIS_PORTS[@]}"; do
        redis_wait_answers "$p"
    done
    log "redis: redis-cli --cluster create ${addrs[*]} --cluster-replicas 1"
    "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$CLUSTERS_DIR/redis/create.log" 2>&1 </dev/null || {
        log "redis: cluster create failed:"
        tail -n 20 "$CLUSTERS_DIR/redis/create.log" >&2
        return 1
    }
    # The replicas attach a few seconds after create returns.
    until redis_healthy; do
        if ((waited >= REDIS_READY_TIMEOUT * 2)); then
            log "redis: the cluster is not ok with 3 attached replicas after ${REDIS_READY_TIMEOUT}s"
            redis_report || true
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    log "redis: up (3 masters, 3 replicas, cluster_state:ok, $CLUSTERS_HOST:7000-7005) after $((SECONDS - UP_START))s"
}

# Pid of the redis-server of ours on PORT (from its pid file, else from
# INFO when it answers and its dir is ours); fails if there is none.
redis_pid() {
    local p=$1 dir pid='' cmdline=''
    dir=$(redis_dir "$p")
    if [[ -f "$dir/redis.pid" ]]; then
        pid=$(cat "$dir/redis.pid")
    fi
    if [[ -n $pid && -r /proc/$pid/cmdline ]]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || cmdline=
    fi
    # A stale pid file, or none: ask the server (if it answers and is ours).
    if [[ $cmdline != *redis-server*":$p "* ]]; then
        pid=
        if redis_answers "$p" && [[ $(rcli "$p" config get pidfile 2>/dev/null | sed -n 2p) == "$dir/redis.pid" ]]; then
            pid=$(rcli "$p" info server | tr -d '\r' | sed -n 's/^process_id://p')
        fi
    fi
    [[ -n $pid ]] && printf '%s\n' "$pid"
}

redis_down_quiet() {
    local p pid pids=() waited=0
    for p in "${REDIS_PORTS[@]}"; do
        if pid=$(redis_pid "$p"); then
            pids+=("$pid")
        elif redis_answers "$p"; then
            log "redis: $CLUSTERS_HOST:$p answers but is not a node of $CLUSTERS_DIR; stop it first"
            return 1
        fi
    done
    if ((${#pids[@]})); then
        log "redis: stopping pids ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        while kill -0 "${pids[@]}" 2>/dev/null; do
            # kill -0 fails only when none of them lives; KILL the rest.
            if ((waited == 20)); then
                kill -KILL "${pids[@]}" 2>/dev/null || true
            elif ((waited > 40)); then
                log "redis: pids ${pids[*]} do not die"
                return 1
            fi
            sleep 0.25
            waited=$((waited + 1))
        done
    fi
    rm -rf "$CLUSTERS_DIR/redis"
}

redis_down() {
    redis_down_quiet
    log "redis: down"
}

redis_kill() {
    local p=$1 pid
    redis_check_port "$p"
    pid=$(redis_pid "$p") || die "redis: no redis-server of ours runs on $p"
    log "redis: SIGKILL redis-server on $p (pid $pid)"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.1
    done
}

redis_restart() {
    local p=$1 dir waited=0 info
    redis_check_port "$p"
    dir=$(redis_dir "$p")
    [[ -f "$dir/redis.conf" ]] || die "redis: no config for $p in $dir (run '$0 up redis' first)"
    if redis_answers "$p"; then
        log "redis: $CLUSTERS_HOST:$p already runs"
        return 0
    fi
    log "redis: restarting $CLUSTERS_HOST:$p with $dir/redis.conf"
    redis_start_node "$p"
    redis_wait_answers "$p"
    # Wait until it is in the cluster again: ok, and either a replica whose
    # link is up or (when it came back before a failover) still a master.
    while :; do
        info=$(rcli "$p" cluster info 2>/dev/null)$(rcli "$p" info replication 2>/dev/null) || info=
        if [[ $info == *cluster_state:ok* && ($info == *role:master* || $info == *master_link_status:up*) ]]; then
            break
        fi
        if ((waited >= REDIS_READY_TIMEOUT * 2)); then
            die "redis: $p did not rejoin the cluster within ${REDIS_READY_TIMEOUT}s"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    if [[ $info == *role:master* ]]; then
        log "redis: $CLUSTERS_HOST:$p is back, as a master"
    else
        log "redis: $CLUSTERS_HOST:$p is back, as a replica of $(sed -n 's/^master_port:/port /p' <<<"${info//$'\r'/}")"
    fi
}

redis_master_of() {
    local key=$1 p slot
    p=$(redis_any_port) || die "redis: no node of the cluster answers"
    slot=$(rcli "$p" cluster keyslot "$key") || die "redis: cluster keyslot failed"
    # Lines: id addr@cport[,hostname] flags master ping pong epoch link slots...
    rcli "$p" cluster nodes | tr -d '\r' | awk -v slot="$slot" '
        $3 ~ /(^|,)master(,|$)/ {
            for (i = 9; i <= NF; i++) {
                if ($i ~ /^\[/) continue
                n = split($i, r, "-")
                lo = r[1] + 0
                hi = (n == 2 ? r[2] : r[1]) + 0
                if (slot >= lo && slot <= hi) {
                    addr = $2
                    sub(/[@,].*/, "", addr)
                    print addr
                    found = 1
                    exit
                }
            }
        }
        END { if (!found) exit 1 }' || die "redis: no master owns slot $slot"
}

# -------------------------------------------------------------------- main

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
}

# Serialises up and down of concurrent invocations. The lock file lies
# beside the state directory (down deletes that); servers are started with
# fd 9 closed so that they do not hold it.
take_lock() {
    exec 9>"$CLUSTERS_DIR.lock"
    flock -w 300 9 || die "another '$0' holds $CLUSTERS_DIR.lock"
}

need_root() {
    if [[ $(id -u) != 0 ]]; then
        die "run as root (RabbitMQ nodes run as the $RMQ_USER user)"
    fi
}

init_rabbitmq() {
    RABBITMQ_SERVER=$(need_bin rabbitmq-server rabbitmq-server)
    RABBITMQCTL=$(need_bin rabbitmqctl rabbitmq-server)
    EPMD=$(need_bin epmd erlang-base)
}

init_redis() {
    REDIS_SERVER=$(need_bin redis-server redis-server)
    REDIS_CLI=$(need_bin redis-cli redis-tools)
}

# which: "" (both), rabbitmq or redis.
check_which() {
    case $1 in
    "" | rabbitmq | redis) ;;
    *) die "unknown cluster '$1' (rabbitmq or redis)" ;;
    esac
}

main() {
    local cmd=${1:-} which=${2:-} ok=0
    UP_START=$SECONDS
    case $cmd in
    up)
        check_which "$which"
        need_root
        mkdir -p "$CLUSTERS_DIR"
        take_lock
        [[ $which == redis ]] || init_rabbitmq
        [[ $which == rabbitmq ]] || init_redis
        # The RabbitMQ nodes boot while the Redis Cluster is made.
        RMQ_STARTED=0
        if [[ $which != redis ]]; then
            rmq_up_begin
        fi
        if [[ $which != rabbitmq ]]; then
            redis_up || ok=1
        fi
        if [[ $which != redis ]]; then
            rmq_up_finish || ok=1
        fi
        if ((ok != 0)); then
            die "up failed after $((SECONDS - UP_START))s (run '$0 down' to clean up)"
        fi
        log "up after $((SECONDS - UP_START))s"
        ;;
    down)
        check_which "$which"
        need_root
        mkdir -p "$CLUSTERS_DIR"
        take_lock
        if [[ $which != redis ]]; then
            init_rabbitmq
            rmq_down
        fi
        if [[ $which != rabbitmq ]]; then
            init_redis
            redis_down
        fi
        if [[ -z $which ]]; then
            rm -rf "$CLUSTERS_DIR"
        fi
        ;;
    status)
        check_which "$which"
        if [[ $which != redis ]]; then
            init_rabbitmq
            rmq_report || ok=1
        fi
        if [[ $which != rabbitmq ]]; then
            init_redis
            redis_report || ok=1
        fi
        return "$ok"
        ;;
    urls)
        printf 'AMQP_URLS=%s\n' "amqp://guest:guest@$CLUSTERS_HOST:5701/%2f,amqp://guest:guest@$CLUSTERS_HOST:5702/%2f,amqp://guest:guest@$CLUSTERS_HOST:5703/%2f"
        local p urls=()
        for p in "${REDIS_PORTS[@]}"; do
            urls+=("redis://$CLUSTERS_HOST:$p/")
        done
        (
            IFS=,
            printf 'REDIS_URLS=%s\n' "${urls[*]}"
        )
        ;;
    rabbitmq-stop-app | rabbitmq-start-app)
        [[ $# -eq 2 ]] || die "usage: $0 $cmd a|b|c"
        rmq_port "$which" >/dev/null
        need_root
        init_rabbitmq
        cmd=${cmd#rabbitmq-}
        cmd=${cmd/-/_}
        log "rabbitmq: $cmd on $(rmq_name "$which")"
        rmqctl "$which" "$cmd"
        ;;
    rabbitmq-watermark)
        [[ $# -eq 3 ]] || die "usage: $0 rabbitmq-watermark a|b|c FRACTION"
        rmq_port "$which" >/dev/null
        need_root
        init_rabbitmq
        log "rabbitmq: memory high watermark $3 on $(rmq_name "$which")"
        rmqctl "$which" set_vm_memory_high_watermark "$3"
        ;;
    _rmqctl)
        # Internal: rabbitmqctl against a node, in a process of its own so
        # that timeout(1) can bound it.
        shift
        init_rabbitmq
        rmqctl "$@"
        ;;
    redis-kill)
        [[ $# -eq 2 ]] || die "usage: $0 redis-kill PORT"
        init_redis
        redis_kill "$which"
        ;;
    redis-restart)
        [[ $# -eq 2 ]] || die "usage: $0 redis-restart PORT"
        init_redis
        redis_restart "$which"
        ;;
    redis-master-of)
        [[ $# -eq 2 ]] || die "usage: $0 redis-master-of KEY"
        init_redis
        redis_master_of "$which"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
