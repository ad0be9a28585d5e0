#!/bin/sh
# Start the API under uwsgi with a clean Prometheus multiprocess directory.
#
# prometheus-client's multiprocess mode keeps one file per worker in PROMETHEUS_MULTIPROC_DIR.
# Files left over from a previous run (a restarted container keeps its filesystem) would be
# added to the new run's counters, so the directory is emptied here, before any worker
# exists; the app itself must not do it (the master reloads the app, and a worker emptying
# the directory would wipe its siblings' metrics).
set -eu

: "${PROMETHEUS_MULTIPROC_DIR:=/tmp/movierec-prometheus}"
export PROMETHEUS_MULTIPROC_DIR
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete

here=$(cd "$(dirname "$0")/.." && pwd)
exec uwsgi --ini "${UWSGI_INI:-$here/uwsgi.ini}" "$@"
