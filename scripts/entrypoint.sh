#!/bin/sh
# Container start-up: wait for the database, bring its schema to head, then run the command
# (default: `nominal serve`), migrating exactly once. `nominal serve` waits and migrates itself;
# any other command runs after `nominal migrate`. Replicas starting together are safe: the
# migration takes a lock, so one migrates and the others wait and find the schema at head.
#
#   NOMINAL_DB_WAIT_S   how long to wait for the database to answer (default 60; 0: no wait)
#   NOMINAL_MIGRATE     0 to skip the migration (e.g. a one-off job against a read replica)
set -eu

wait_s="${NOMINAL_DB_WAIT_S:-60}"
migrate="${NOMINAL_MIGRATE:-1}"

if [ "$#" -eq 0 ]; then
    set -- nominal serve --host 0.0.0.0 --port 8000
fi

if [ "$#" -ge 2 ] && [ "$1" = "nominal" ] && [ "$2" = "serve" ]; then
    shift 2
    if [ "$migrate" = "0" ]; then
        exec nominal serve --no-migrate "$@"
    fi
    exec nominal serve --wait "$wait_s" "$@"
fi

if [ "$migrate" != "0" ]; then
    nominal migrate --wait "$wait_s"
fi
exec "$@"
