#!/bin/sh
# Start the API under uwsgi with a clean Prometheus multiprocess directory.
#
# prometheus-client's multiprocess mode keeps one file per worker in PROMETHEUS_MULTIPROC_DIR.
# Files left over from a previous run (a restarted container keeps its filesystem) would be
# added to the new run's counters, so the directory is emptied here, before any worker
# exists; the app itself must not do it (the master reloads the app, and a worker emptying
# the directory would wipe its siblings' metrics).
set -eu

# The default is one directory per port: with one fixed name, a second instance on the host (another
# checkout's `make serve-prod PORT=…`) emptied the first's files at its start, and from then on each
# instance's /metrics added up the other's requests too.
case "${MOVIEREC_PORT:-}" in
    '' | *[!0-9]*) metrics_port=8000 ;;  # app/listener.py's default (and it refuses anything else)
    *) metrics_port=$MOVIEREC_PORT ;;
esac
: "${PROMETHEUS_MULTIPROC_DIR:=${TMPDIR:-/tmp}/movierec-prometheus-$metrics_port}"
export PROMETHEUS_MULTIPROC_DIR
mkdir -p -m 0700 "$PROMETHEUS_MULTIPROC_DIR"
# Every scrape adds up the files it finds there, and the default is a fixed name in the shared
# /tmp: a directory another user made, or may write to, would let them swap the files.
if [ -L "$PROMETHEUS_MULTIPROC_DIR" ] || [ ! -O "$PROMETHEUS_MULTIPROC_DIR" ] \
    || [ -n "$(find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 0 -perm /022)" ]; then
    echo "start-uwsgi.sh: PROMETHEUS_MULTIPROC_DIR=$PROMETHEUS_MULTIPROC_DIR must be a directory of this user that no other may write" >&2
    exit 1
fi
find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete

here=$(cd "$(dirname "$0")/.." && pwd)
# uwsgi also reads each UWSGI_<OPTION> variable as that option: left set, UWSGI_INI loaded the
# file a second time (every option twice; a second HTTP router then fails to bind the port)
ini=${UWSGI_INI:-$here/uwsgi.ini}
unset UWSGI_INI
# app/listener.py binds the HTTP port (MOVIEREC_HOST, MOVIEREC_PORT) with TCP_NODELAY and runs
# uwsgi with it as fd 3 (uwsgi.ini: http = fd://3); the Python and uwsgi are the ones on PATH
exec python -m app.listener uwsgi --ini "$ini" "$@"
