#!/bin/sh
# Container start-up: wait for the database, bring its schema to head, then run the command
# (default: `nominal serve`). Replicas starting together are safe: the migration takes a lock,
# so one migrates and the others wait and find the schema at head.
#
#   NOMINAL_DB_WAIT_S   how long to wait for the database to answer (default 60; 0: no wait)
#   NOMINAL_MIGRATE     0 to skip the migration (e.g. a one-off job against a read replica)
set -eu

if [ "${NOMINAL_MIGRATE:-1}" != "0" ]; then
    python -m app.db.migrate --wait "${NOMINAL_DB_WAIT_S:-60}"
fi

if [ "$#" -eq 0 ]; then
    set -- nominal serve --host 0.0.0.0 --port 8000
fi
exec "$@"
