#!/usr/bin/env bash
# Local services for tributary's tests and demo: RabbitMQ on 127.0.0.1:5672
# and Redis on 127.0.0.1:6379.
#
# Usage:
#   scripts/services.sh          start whichever is not answering (and turn on
#                                RabbitMQ's management plugin, port 15672), then
#                                wait until both answer (RabbitMQ up to 60 s,
#                                Redis up to 30 s); exit 1 if one does not
#   scripts/services.sh --check  only report; exit 0 if both answer, else 1
#
# It can also be sourced (`. scripts/services.sh`); that only defines the
# functions services_up and services_check and changes no shell options.

SERVICES_HOST=127.0.0.1
SERVICES_RABBITMQ_PORT=5672
SERVICES_MANAGEMENT_PORT=15672
SERVICES_REDIS_PORT=6379
SERVICES_INSTALL_HINT="install them with 'apt-get install rabbitmq-server redis-server' or run 'docker compose up -d rabbitmq redis'"

_services_log() {
    printf 'services: %s\n' "$*" >&2
}

# Prints the path of executable $1, also looking in the sbin directories
# that are often missing from a non-root PATH.
_services_find() {
    local dir
    if command -v "$1" 2>/dev/null; then
        return 0
    fi
    for dir in /usr/sbin /usr/local/sbin /sbin /usr/lib/rabbitmq/bin; do
        if [[ -x "$dir/$1" ]]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

_services_port_open() {
    timeout 2 bash -c "</dev/tcp/$1/$2" 2>/dev/null
}

rabbitmq_answers() {
    _services_port_open "$SERVICES_HOST" "$SERVICES_RABBITMQ_PORT"
}

redis_answers() {
    local reply cli
    if cli=$(_services_find redis-cli); then
        reply=$(timeout 2 "$cli" -h "$SERVICES_HOST" -p "$SERVICES_REDIS_PORT" ping 2>/dev/null) || return 1
    else
        # No redis-cli: speak RESP over bash's /dev/tcp.
        reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/$SERVICES_HOST/$SERVICES_REDIS_PORT && printf 'PING\r\n' >&3 && IFS= read -r line <&3 && printf '%s' \"\$line\"" 2>/dev/null) || return 1
        reply=${reply#+}
        reply=${reply%$'\r'}
    fi
    [[ "$reply" == PONG ]]
}

# _services_wait NAME SECONDS CHECK_FUNCTION
_services_wait() {
    local name=$1 secs=$2 check=$3 waited=0
    until "$check"; do
        if ((waited >= secs)); then
            _services_log "$name did not answer within ${secs}s"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    _services_log "$name is up (after ${waited}s)"
}

_services_start_rabbitmq() {
    local server
    if rabbitmq_answers; then
        _services_log "rabbitmq already answers on $SERVICES_HOST:$SERVICES_RABBITMQ_PORT"
        return 0
    fi
    if ! server=$(_services_find rabbitmq-server); then
        _services_log "rabbitmq-server not found; $SERVICES_INSTALL_HINT"
        return 1
    fi
    _services_log "starting rabbitmq ($server -detached)"
    "$server" -detached || {
        _services_log "rabbitmq-server -detached failed"
        return 1
    }
    _services_wait rabbitmq 60 rabbitmq_answers || {
        _services_log "see the RabbitMQ logs (usually /var/log/rabbitmq/)"
        return 1
    }
}

_services_start_redis() {
    local server
    if redis_answers; then
        _services_log "redis already answers on $SERVICES_HOST:$SERVICES_REDIS_PORT"
        return 0
    fi
    if ! server=$(_services_find redis-server); then
        _services_log "redis-server not found; $SERVICES_INSTALL_HINT"
        return 1
    fi
    _services_log "starting redis ($server --daemonize yes)"
    "$server" --daemonize yes --bind "$SERVICES_HOST" --port "$SERVICES_REDIS_PORT" \
        --save "" --appendonly no >/dev/null || {
        _services_log "redis-server --daemonize yes failed"
        return 1
    }
    _services_wait redis 30 redis_answers
}

management_answers() {
    _services_port_open "$SERVICES_HOST" "$SERVICES_MANAGEMENT_PORT"
}

# The dashboard's queue rates and unacked counts come from RabbitMQ's management
# API (producer serve --management-url); its tests need the plugin on.
_services_enable_management() {
    local plugins
    if management_answers; then
        return 0
    fi
    if ! plugins=$(_services_find rabbitmq-plugins); then
        _services_log "rabbitmq-plugins not found: enable rabbitmq_management by hand"
        return 1
    fi
    _services_log "enabling rabbitmq_management ($plugins enable)"
    timeout 120 "$plugins" enable rabbitmq_management >/dev/null || {
        _services_log "rabbitmq-plugins enable rabbitmq_management failed"
        return 1
    }
    _services_wait "rabbitmq management API" 60 management_answers
}

# Starts what is not answering and waits for it; 0 if both answer.
services_up() {
    _services_start_rabbitmq && _services_enable_management && _services_start_redis
}

# Reports both services; 0 if both answer.
services_check() {
    local ok=0
    if rabbitmq_answers; then
        _services_log "rabbitmq: up ($SERVICES_HOST:$SERVICES_RABBITMQ_PORT)"
    else
        _services_log "rabbitmq: DOWN ($SERVICES_HOST:$SERVICES_RABBITMQ_PORT)"
        ok=1
    fi
    if redis_answers; then
        _services_log "redis: up ($SERVICES_HOST:$SERVICES_REDIS_PORT)"
    else
        _services_log "redis: DOWN ($SERVICES_HOST:$SERVICES_REDIS_PORT)"
        ok=1
    fi
    if ((ok != 0)); then
        _services_log "start them with scripts/services.sh"
    fi
    return "$ok"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
    "") services_up ;;
    --check) services_check ;;
    -h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0" ;;
    *)
        _services_log "unknown option '$1' (try --help)"
        exit 2
        ;;
    esac
fi
