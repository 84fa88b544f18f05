# syntax=docker/dockerfile:1
# One image for every taskstream process: `processor`, `worker` and the CLI
# (docs/deploy.md). Two stages: `build` installs the package with its pinned
# dependencies (constraints.txt, binary wheels only: no compiler in either stage)
# into a virtualenv; the runtime stage copies only that virtualenv onto a slim
# Python and runs as an unprivileged user.
#
#   docker build -t taskstream:dev .
#   docker run --rm taskstream:dev processor          # or: worker -A examples.tasks
#
# Your tasks: FROM this image, COPY your package into /app, run
# `worker -A yourpackage.tasks` (the worker imports from its working directory).
#
# tests/test_deploy_image.py runs this file's `build` RUN steps in a fresh virtualenv
# and the ENTRYPOINT the same way (no Docker engine there): keep every build step a
# plain RUN of "$VENV/..." commands.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV VENV=/opt/taskstream \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python -m venv "$VENV"
RUN "$VENV/bin/pip" install --only-binary=:all: -c constraints.txt .
RUN "$VENV/bin/taskstream" --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ENV VENV=/opt/taskstream
ENV PATH="$VENV/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    TASKSTREAM_WEB_HOST=0.0.0.0 \
    TASKSTREAM_DATA_DIR=/var/lib/taskstream/data
RUN groupadd --system --gid 10001 taskstream \
 && useradd --system --uid 10001 --gid taskstream --no-create-home \
            --home-dir /var/lib/taskstream --shell /usr/sbin/nologin taskstream \
 && install -d -o taskstream -g taskstream /var/lib/taskstream /var/lib/taskstream/data
COPY --from=build /opt/taskstream /opt/taskstream
COPY --from=build /src/examples /app/examples
WORKDIR /app
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["taskstream"]
CMD ["--help"]
