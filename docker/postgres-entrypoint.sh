#!/bin/sh
# Initialise the cluster on first start (as the official postgres image does: POSTGRES_USER, its
# password, POSTGRES_DB and the scripts in /docker-entrypoint-initdb.d), then run the server.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  # UTF8 explicitly: a minimal base has no locale, and SQL_ASCII makes drivers return bytes
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  export PGPASSWORD="$POSTGRES_PASSWORD"  # for createdb and the init scripts' psql (local scram)
  if [ "$POSTGRES_DB" != "postgres" ]; then
    createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  fi
  # as the official image does: each *.sh run (executable) or sourced, once, on the new cluster
  for f in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$f" ] || continue
    if [ -x "$f" ]; then "$f"; else . "$f"; fi
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
if [ "${1:-}" = "postgres" ]; then shift; fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
