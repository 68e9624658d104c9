#!/usr/bin/env bash
# Install and start PostgreSQL (Debian's package) with a `litefleet` role and database, for the test suite's
# PostgreSQL pass. Idempotent. Prints the URL to export as LITEFLEET_TEST_DATABASE_URL.
set -euo pipefail

if ! command -v pg_ctlcluster >/dev/null || [ ! -d /usr/lib/postgresql ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
pg_lsclusters -h | grep "^$version main" | grep -q online || pg_ctlcluster "$version" main start
for _ in $(seq 1 30); do su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break; sleep 0.5; done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='litefleet'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"create role litefleet login password 'litefleet'\""
su postgres -c "psql -qtAc \"select 1 from pg_database where datname='litefleet'\"" | grep -q 1 ||
  su postgres -c "psql -qc 'create database litefleet owner litefleet'"
echo "postgresql+psycopg://litefleet:litefleet@127.0.0.1:5432/litefleet"
