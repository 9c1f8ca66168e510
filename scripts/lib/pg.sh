# Throwaway PostgreSQL clusters from the machine's own binaries, for tests and benchmarks.
# Source this file, then call `pg_start` (sets PG_URL, PG_PORT, PG_DIR), optionally
# `pg_replica_start NAME [APPLY_DELAY]` (prints the replica's URL), `pg_cluster_start NAME LOCALE`
# (a second cluster with a locale), and `pg_stop`.
# As root, the servers run as the `postgres` user. A cluster that cannot start is an error.
# Each run's clusters take a password of their own (scram-sha-256), and their directory is their
# owner's alone: a trusted superuser on a local port would let any user of the machine run
# commands as `postgres`. The password is in PG_URL (hand it to programs in their environment,
# which only their user can read, never as an argument, which `ps` shows everyone) and in the
# password file PGPASSFILE names, which the PostgreSQL tools here read.

pg_bindir() {
    local dir
    # The newest version that has the server: a newer client-only package may sit beside it.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [ -x "$dir/initdb" ]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    else
        echo "pg.sh: no PostgreSQL server binaries (initdb, pg_ctl) found; install PostgreSQL" >&2
        return 1
    fi
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pg_start [extra postgres -c settings...]
pg_start() {
    PG_BIN=$(pg_bindir) || return 1
    # Under TMPDIR when set (a run's databases take gigabytes: /tmp may be a small tmpfs).
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tessera-pg.XXXXXX")
    chmod 700 "$PG_DIR"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PG_DIR"
        as_postgres test -w "$PG_DIR" || {
            echo "pg.sh: the postgres user cannot reach $PG_DIR; set TMPDIR to a directory it can (or unset it)" >&2
            return 1
        }
    fi
    PG_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    (umask 077 && echo "$PG_PASSWORD" | as_postgres tee "$PG_DIR/password" >/dev/null)
    (umask 077 && echo "127.0.0.1:*:*:postgres:$PG_PASSWORD" | as_postgres tee "$PG_DIR/pgpass" >/dev/null)
    # Read by psql and pg_basebackup here, and by the replicas' servers (their primary_conninfo).
    export PGPASSFILE="$PG_DIR/pgpass"
    pg_initdb "$PG_DIR/data" initdb --no-locale || return 1
    PG_PORT=$(free_port)
    local opts="-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=500"
    local setting
    for setting in "$@"; do opts="$opts -c $setting"; done
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -o "$opts" -w -t 60 start \
        >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
    PG_URL=$(pg_url "$PG_PORT")
    # (PG_PASSWORD is not exported: `pg_url` reads it here, and programs get PG_URL.)
    export PG_URL PG_PORT PG_DIR PG_BIN
}

# pg_initdb DIR LOG_NAME [initdb options...]: a cluster whose superuser `postgres` has the run's
# password.
pg_initdb() {
    local dir=$1 log=$2
    shift 2
    as_postgres "$PG_BIN/initdb" -D "$dir" -U postgres --auth=scram-sha-256 --pwfile="$PG_DIR/password" -E UTF8 "$@" \
        >"$PG_DIR/$log.log" 2>&1 || { cat "$PG_DIR/$log.log" >&2; return 1; }
}

# pg_url PORT: the superuser's URL of a cluster of this run.
pg_url() {
    echo "postgres://postgres:$PG_PASSWORD@127.0.0.1:$1/postgres"
}

# pg_replica_start NAME [APPLY_DELAY]: a streaming replica of the running cluster (pg_basebackup),
# optionally replaying with `recovery_min_apply_delay`. Prints its URL.
pg_replica_start() {
    local name=$1 delay=${2:-} dir port
    dir="$PG_DIR/$name"
    as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$dir" -R -X stream \
        >"$PG_DIR/$name-basebackup.log" 2>&1 || { cat "$PG_DIR/$name-basebackup.log" >&2; return 1; }
    if [ -n "$delay" ]; then
        echo "recovery_min_apply_delay = '$delay'" | as_postgres tee -a "$dir/postgresql.auto.conf" >/dev/null
    fi
    port=$(free_port)
    as_postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$PG_DIR/$name.log" \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=500 -c hot_standby=on" \
        -w -t 60 start >/dev/null || { cat "$PG_DIR/$name.log" >&2; return 1; }
    pg_url "$port"
}

# pg_cluster_start NAME LOCALE: a second, independent cluster under PG_DIR, initialised with
# LOCALE (e.g. C.UTF-8, where lower() folds Unicode as production clusters usually do). Prints
# its URL; pg_stop stops it with the rest.
pg_cluster_start() {
    local name=$1 locale=$2 dir port
    dir="$PG_DIR/$name"
    pg_initdb "$dir" "$name-initdb" --locale="$locale" || return 1
    port=$(free_port)
    as_postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$PG_DIR/$name.log" \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
        -w -t 60 start >/dev/null || { cat "$PG_DIR/$name.log" >&2; return 1; }
    pg_url "$port"
}

pg_stop() {
    local pid_file
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
        # Every server under PG_DIR, replicas included (they are started in command substitutions,
        # so the caller's shell never learns their data directories).
        for pid_file in "$PG_DIR"/*/postmaster.pid; do
            [ -f "$pid_file" ] && as_postgres "$PG_BIN/pg_ctl" -D "$(dirname "$pid_file")" -m immediate -w stop \
                >/dev/null 2>&1
        done
        rm -rf "$PG_DIR"
    fi
    return 0
}
