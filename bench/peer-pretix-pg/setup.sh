#!/usr/bin/env bash
# pretix on PostgreSQL: a fresh database, migrated, with an admin, an
# organizer and an API token (in $PEER_ROOT/token). Needs the shared peer's
# virtualenv (its setup.sh) and PEER_PG="host=... user=..." naming a server.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEER="$(cd "$HERE/../../../shared/peer-pretix" && pwd)"
ROOT="${PEER_ROOT:-/tmp/peer-pretix-pg}"
SHARED_ROOT="${SHARED_PEER_ROOT:-/tmp/peer-pretix}"
: "${PEER_PG:?PEER_PG=\"host=... user=...\" names the PostgreSQL server}"
host=$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$PEER_PG")
user=$(sed -n 's/.*user=\([^ ]*\).*/\1/p' <<<"$PEER_PG")
name="pretix_$(date +%s)"
mkdir -p "$ROOT/data"
ln -sfn "$SHARED_ROOT/venv" "$ROOT/venv"
ln -sfn "$SHARED_ROOT/cargo" "$ROOT/cargo"
"$ROOT/venv/bin/pip" install -q psycopg2-binary
psql "$PEER_PG dbname=postgres" -qc "CREATE DATABASE $name"
sed -e "s|@ROOT@|$ROOT|g" -e "s|@NAME@|$name|" -e "s|@USER@|$user|" -e "s|@HOST@|$host|" \
    "$HERE/pretix.cfg.in" > "$ROOT/pretix.cfg"
export PRETIX_CONFIG_FILE="$ROOT/pretix.cfg" PYTHONPATH="$PEER" DJANGO_SETTINGS_MODULE=peer_settings
"$ROOT/venv/bin/python" -m pretix migrate > "$ROOT/migrate.log"
"$ROOT/venv/bin/python" -m pretix shell < "$PEER/bootstrap_orm.py" | sed -n 's/^TOKEN=//p' > "$ROOT/token"
echo "pretix on PostgreSQL database $name; token in $ROOT/token"
