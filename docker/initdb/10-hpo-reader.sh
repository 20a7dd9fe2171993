#!/bin/sh
# The dashboard's read-only database role, made once when the cluster is initialised: the postgres
# image's entrypoint (postgres:16, and docker/postgres-entrypoint.sh for Debian's packages) runs
# every /docker-entrypoint-initdb.d/*.sh against the new database as POSTGRES_USER. hpo_reader
# may connect and SELECT, nothing else: optuna-dashboard's API can delete studies and tell trials,
# and a read-only role keeps the database safe even from a dashboard started with --allow-writes.
# Tables are created later, by the workers' role (POSTGRES_USER), so its default privileges
# grant SELECT on every table it creates. The same script is in k8s/hpo.yaml (a test compares them).
set -e
if [ -z "${HPO_READER_PASSWORD:-}" ]; then
    echo "10-hpo-reader.sh: set HPO_READER_PASSWORD (the dashboard's database password)" >&2
    exit 1
fi
# The password is read from the environment inside psql (\getenv), never put on a command line.
psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
\getenv reader_password HPO_READER_PASSWORD
CREATE ROLE hpo_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"db" TO hpo_reader;
GRANT USAGE ON SCHEMA public TO hpo_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO hpo_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO hpo_reader;
SQL
echo "10-hpo-reader.sh: role hpo_reader may read database $POSTGRES_DB"
