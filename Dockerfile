# movierec images, one file, three targets:
#
#   docker build -t movierec:1.0 .                           # the API + a tested model (default)
#   docker build -t movierec-server:1.0 --target server .     # the API, model from a volume
#   docker build -t movierec-pipeline:1.0 --target pipeline . # training / scheduler / MLflow UI
#
# Build arguments
#   BASE_IMAGE          a Debian-based Python 3.11 image (default python:3.11-slim; the test
#                       tier uses a debootstrap image because it has no Docker Hub)
#   MODEL_FILE          the model baked into the API image, relative to the build context:
#                       a bundle directory, a model store (its latest bundle: `make model`
#                       writes one at model), a .tar.gz of a bundle, or a seed-style model.pkl
#                       given as the directory that holds it and the catalogue.csv of its titles
#                       (the image has no data set; deploy-docker.py stages the two from a model.pkl)
#                       (default: model/latest, the newest bundle `movierec train` wrote)
#   MODEL_TEST_FILE     accuracy test data (default: the bundle's own test_data.json, the store's
#                       latest's, or the one beside a model.pkl; a .tar.gz needs it given)
#   ACCURACY_TOLERANCE  allowed drop below the expected score (default 1e-5)
#
# The API image runs tests/run_accuracy_tests.py on the model while it is built, inside the
# runtime environment it will serve from: a model that scores below its expected score (or
# a bundle that does not load) fails the build. No secret is read at build time; the session
# password and JWT secret are given to `docker run` (see deploy-docker.py and docs/docker.md).
#
# Note for the classic builder (DOCKER_BUILDKIT=0, Docker < 23): it builds every stage that
# precedes the target, so an API build also builds the pipeline stages. BuildKit skips them.

ARG BASE_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- base
FROM ${BASE_IMAGE} AS base
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Extra CA certificates for networks behind a TLS-inspecting proxy: put PEM files named
# *.crt in extra-ca/ (it normally holds only .gitkeep). CA certificates are not secrets.
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN set -eu; \
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi; \
    rm -f /usr/local/share/ca-certificates/.gitkeep

# --------------------------------------------------------------------------- builder
# Compilers and headers live only here: uWSGI is built from source, everything else comes
# as wheels. Runtime stages copy a finished virtualenv, never the toolchain.
FROM base AS builder
RUN set -eu; \
    pyinc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
    extra=""; [ -f "$pyinc/Python.h" ] || extra="python3-dev"; \
    apt-get update -q; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev $extra >/dev/null; \
    rm -rf /var/lib/apt/lists/*
# pip uses its own CA bundle unless told otherwise; the system bundle includes extra-ca/.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/build && /opt/build/bin/pip install -q "pip>=24" "setuptools>=68" wheel
ENV PATH=/opt/build/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.txt README.md ./

# Dependencies, against an empty placeholder package: these layers depend only on
# pyproject.toml and requirements.txt, so a code change does not reinstall them.
FROM builder AS deps-serve
RUN set -eu; mkdir -p app && touch app/__init__.py; \
    pip wheel -q --wheel-dir /wheels -c requirements.txt '.[serve]'; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -q --no-index --find-links /wheels 'movierec[serve]'

# The pipeline's extras go on top (same pins, nothing installed twice).
FROM deps-serve AS deps-pipeline
RUN /opt/venv/bin/pip install -q --find-links /wheels -c requirements.txt 'movierec[pipeline]'

# The package itself: a wheel of app/, which replaces the placeholder. The runtime targets copy
# the dependencies' virtualenv first and install this wheel over it in a layer of its own: a
# code change ships that small layer, not a new copy of every dependency (it did until 2026-12-06,
# when the targets copied a virtualenv that held both).
FROM builder AS package
COPY app/ app/
RUN pip wheel -q --no-deps --wheel-dir /dist .

# The image's other files, copied last into both targets, so a change to one of them does not
# rebuild the layers before it either.
FROM scratch AS files
COPY uwsgi.ini /app/
COPY scripts/start-uwsgi.sh /app/scripts/
COPY tests/run_accuracy_tests.py /app/tests/

# --------------------------------------------------------------------------- runtime
FROM base AS runtime
# uWSGI links libpython; python:*-slim ships it, Debian's own python3 package does not.
RUN set -eu; \
    v=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
    if ! ldconfig -p | grep -q "libpython$v.so"; then \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "libpython$v" >/dev/null; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 movierec; \
    useradd --system --uid 10001 --gid movierec --home-dir /var/lib/movierec --shell /usr/sbin/nologin movierec; \
    install -d -o movierec -g movierec -m 0750 /var/lib/movierec /var/lib/movierec/data /var/lib/movierec/models \
        /var/lib/movierec/db /var/lib/movierec/var /var/lib/movierec/mlflow /var/lib/movierec/metaflow \
        /var/lib/movierec/journal
ENV PATH=/opt/venv/bin:$PATH \
    MOVIEREC_DATABASE_URL=sqlite:////var/lib/movierec/db/movierec.db \
    MOVIEREC_DATA_DIR=/var/lib/movierec/data \
    MOVIEREC_MODEL_DIR=/var/lib/movierec/models \
    MOVIEREC_VAR_DIR=/var/lib/movierec/var \
    MOVIEREC_FEEDBACK_JOURNAL_DIR=/var/lib/movierec/journal
WORKDIR /app

# --------------------------------------------------------------------------- pipeline target
# Training, the scheduler and the MLflow UI (see docker-compose.yml). No model is baked in:
# it trains into the model store volume.
FROM runtime AS pipeline
# LightGBM's wheel needs the system OpenMP runtime.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libgomp1 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deps-pipeline /opt/venv /opt/venv
COPY --from=package /dist /tmp/dist
RUN /opt/venv/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check --no-deps \
        --force-reinstall /tmp/dist/movierec-*.whl \
    && rm -rf /tmp/dist
COPY --from=files /app /app
# `movierec data fetch` downloads the data set with pip: trust the same CA bundle as the build.
# MLflow and Metaflow keep their stores under MOVIEREC_VAR_DIR unless
# MOVIEREC_MLFLOW_TRACKING_URI names a tracking server (docker-compose.yml does).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    METAFLOW_USER=movierec
USER movierec
RUN movierec --help >/dev/null
HEALTHCHECK NONE
CMD ["movierec", "schedule"]

# --------------------------------------------------------------------------- the API
# `server`: the API without a baked-in model; ML_MODEL_PATH must point to a model store
# (docker-compose.yml mounts the volume the pipeline trains into).
FROM runtime AS server
COPY --from=deps-serve /opt/venv /opt/venv
COPY --from=package /dist /tmp/dist
RUN /opt/venv/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check --no-deps \
        --force-reinstall /tmp/dist/movierec-*.whl \
    && rm -rf /tmp/dist
COPY --from=files /app /app
ENV ML_MODEL_PATH=/var/lib/movierec/models \
    MOVIEREC_PORT=8000
USER movierec
EXPOSE 8000
# /health/ready on the container's loopback, never through the proxy Docker may give it (app/healthcheck.py)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["/app/scripts/start-uwsgi.sh"]

# The model stage runs the accuracy test in exactly the environment the API serves from,
# then installs the model as a model store (/model/<version>, /model/latest). Only the
# installed store reaches the final image, in one layer.
# The test data's COPY needs a source when MODEL_TEST_FILE is not given: pyproject.toml, which
# every build has, is copied then and not used (the model's own test data is in /tmp/model-in;
# the default was ${MODEL_FILE}/test_data.json, which a model store has not, so a store failed
# in that COPY with only Docker's "not found").
# What MODEL_FILE is (a bundle, a model store, a directory holding a model.pkl, a file) and which test
# data is its own, app/deploy.py decides (model-input: model_kind, which deploy-docker.py's model_source
# uses before the build too); it prints an Error: line for one it cannot build.
FROM server AS model
USER root
ARG MODEL_FILE=model/latest
ARG MODEL_TEST_FILE=
ARG ACCURACY_TOLERANCE=1e-5
COPY ${MODEL_FILE} /tmp/model-in/
COPY ${MODEL_TEST_FILE:-pyproject.toml} /tmp/model-test/test_data.json
RUN set -eu; \
    echo "accuracy test: MODEL_FILE=$MODEL_FILE MODEL_TEST_FILE=${MODEL_TEST_FILE:-<bundle>/test_data.json}"; \
    python -m app.deploy model-input /tmp/model-in "$MODEL_FILE" ${MODEL_TEST_FILE:+/tmp/model-test/test_data.json} \
        >/tmp/model-input; \
    src=$(sed -n 1p /tmp/model-input); test_data=$(sed -n 2p /tmp/model-input); \
    python tests/run_accuracy_tests.py "$src" "$test_data" --error-tolerance "$ACCURACY_TOLERANCE"; \
    python -m app.deploy install-model "$src" /model --test-data "$test_data"

# `api` (the default target): the server with the tested model baked in at /model.
FROM server AS api
COPY --from=model /model /model
ENV ML_MODEL_PATH=/model
