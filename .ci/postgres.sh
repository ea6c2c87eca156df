#!/usr/bin/env bash
# Starts the Debian PostgreSQL cluster for the store tests and gives the
# postgres role the password the tests use over TCP on 127.0.0.1.
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q .; then
	pg_createcluster "$ver" main >/dev/null
fi
cluster=$(pg_lsclusters -h | head -1 | awk '{print $1" "$2}')
pg_ctlcluster $cluster start 2>/dev/null || true
for _ in $(seq 1 30); do
	pg_isready -q -h 127.0.0.1 && break
	sleep 1
done
pg_isready -h 127.0.0.1
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'causeway'\""
