#!/usr/bin/env bash
# Liveness check with bash alone (the runtime image has no curl): GET /healthz (or $2) on
# 127.0.0.1 at port $1, else TRENDSTORY_SERVER__PORT, else 8080; exit 0 on HTTP 200.
# The image's HEALTHCHECK runs it as /usr/local/bin/trendstory-healthcheck; the deploy
# tests run the same file against a local server.
set -uo pipefail
port="${1:-${TRENDSTORY_SERVER__PORT:-8080}}"
path="${2:-/healthz}"

exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || exit 1
exec 3<&-
[[ "$status" == "HTTP/"*" 200 "* ]]
