# Sourced by .ci/run: start a throwaway PostgreSQL cluster on 127.0.0.1 and export
# COSTOPT_TEST_POSTGRES (an Optuna storage URL). The cluster is stopped and removed on exit.
PG_AS=()  # initdb and the server refuse to run as root: run them as the postgres user then

start_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || return 1
        (apt-get install -y -q postgresql >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null)) || return 1
    fi
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PG_PORT=${COSTOPT_PG_PORT:-54329}
    PG_DATA=$(mktemp -d /tmp/costopt-pg.XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_DATA"
        PG_AS=(runuser -u postgres --)
    fi
    trap stop_postgres EXIT
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null || return 1
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -l "$PG_DATA/log" \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA" start >/dev/null || return 1
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres costopt || return 1
    export COSTOPT_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/costopt"
    # the test of workers outliving a server restart runs this (fast shutdown drops every connection)
    export COSTOPT_TEST_PG_RESTART="${PG_AS[*]} $PG_BIN/pg_ctl -D $PG_DATA -w -m fast -l $PG_DATA/log restart"
}

stop_postgres() {
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_DATA"
}
