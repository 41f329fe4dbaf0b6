"""The supervisor's image, built from the Dockerfile and run the ways the README and the
Dockerfile's header say: compose/stack.yml's supervisor service (the README's GPU-host
command) and the header's `docker run`. No registry is reachable here, so the base is a
Debian made locally (scripts/base-image.sh, cached by a content tag) and the GPU runtime
is runc. The supervisor in the container starts a stand-in model through the mounted
Docker socket, adopts it after its own restart (and from a second container), and serves
/metrics and the status page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import ComposeProject

REPO = Path(__file__).resolve().parents[2]
STACK_UP = "docker compose -f compose/stack.yml up -d"  # the README's GPU-host command
CONFIG = "tests/integration/stack-supervisor.yaml"  # listens on 19180, admin on 19181
PROXY, ADMIN = "http://127.0.0.1:19180", "http://127.0.0.1:19181"
TOKEN = "image-test-token"
MODELS_PROJECT = "mstest-stack-models"  # the config's compose.project
IMAGE = "model-supervisor:local"  # compose/stack.yml's image


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def poll(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            result = check()
        except requests.ConnectionError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def base_image(docker_engine: None) -> str:
    if shutil.which("mmdebstrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs mmdebstrap: scripts/setup.sh installs it")
        pytest.skip("no mmdebstrap (apt-get install mmdebstrap)")
    return run(["bash", "scripts/base-image.sh"]).strip().splitlines()[-1]


@pytest.fixture
def models() -> Iterator[ComposeProject]:
    project = ComposeProject(REPO / "tests" / "integration" / "compose.yml",
                             name=MODELS_PROJECT)
    project.down()  # a model left by an interrupted run would be adopted, not started
    yield project
    project.down()


@pytest.fixture
def stack_env(base_image: str) -> Iterator[dict[str, str]]:
    """The environment of the README's command here: the variables compose/stack.yml
    documents, and a Compose project of this test's own (removed afterwards)."""
    env = {**os.environ, "PWD": str(REPO),
           "COMPOSE_PROJECT_NAME": f"mstest-stack-{uuid.uuid4().hex[:8]}",
           "SUPERVISOR_BASE_IMAGE": base_image, "SUPERVISOR_CONFIG": CONFIG,
           "SUPERVISOR_ADMIN_TOKEN": TOKEN, "SUPERVISOR_RUNTIME": "runc"}
    yield env
    subprocess.run(["docker", "compose", "-f", "compose/stack.yml", "down", "--timeout", "5"],
                   cwd=REPO, env=env, capture_output=True, timeout=120)


def image_id(name: str) -> str:
    done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", name],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


def chat() -> requests.Response:
    return requests.post(PROXY + "/v1/chat/completions", timeout=60, json={
        "model": "chat-fast", "messages": [{"role": "user", "content": "hello"}]})


def model_state(headers: dict[str, str]) -> str:
    r = requests.get(ADMIN + "/admin/models/chat-fast", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    state: str = r.json()["state"]
    return state


def healthy() -> bool:
    return requests.get(PROXY + "/healthz", timeout=2).status_code == 200


def header_docker_run() -> str:
    """The `docker run` command of the Dockerfile's header, its lines joined."""
    header = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = "\n".join(header).replace("\\\n", " ")
    found = re.search(r"^docker run .*$", text, re.M)
    assert found, "the Dockerfile's header must show how to run the image"
    return found.group(0)


def test_the_readme_and_the_dockerfile_show_the_commands_run_here() -> None:
    readme = (REPO / "README.md").read_text()
    gpu_host = readme.split("## On a GPU host", 1)[1].split("\n## ", 1)[0]
    assert STACK_UP in gpu_host
    assert "--config model-supervisor.yaml" in header_docker_run()


def test_the_image_runs_the_stack_service_starts_a_model_and_adopts_it(
        stack_env: dict[str, str], models: ComposeProject) -> None:
    compose = ["docker", "compose", "-f", "compose/stack.yml"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = image_id(IMAGE)
    run([*compose, "build", "supervisor"], stack_env, timeout=600)
    if before and before != image_id(IMAGE):  # the previous build, now untagged
        subprocess.run(["docker", "image", "rm", before], capture_output=True, timeout=60)
    run([*STACK_UP.split(), "supervisor"], stack_env)

    def logs() -> str:
        return run([*compose, "logs", "--no-log-prefix", "supervisor"], stack_env)[-3000:]

    try:
        poll(healthy, 60, "the supervisor in its container")
        first = chat()
        assert first.status_code == 200, first.text
        assert first.headers["X-Supervisor-Cold-Start"] == "true"  # started on request
        assert models.running("chat-fast")

        run([*compose, "restart", "--timeout", "10", "supervisor"], stack_env)
        poll(healthy, 60, "the restarted supervisor")
        poll(lambda: model_state(auth) == "ready", 10, "the model adopted")
        assert models.log_lines("chat-fast", "standin: starting") == 1  # not restarted
        again = chat()
        assert again.status_code == 200 and "X-Supervisor-Cold-Start" not in again.headers

        metrics = requests.get(PROXY + "/metrics", timeout=10)
        assert metrics.status_code == 200
        assert 'supervisor_model_state{model="chat-fast",state="ready"} 1' in metrics.text
        page = requests.get(ADMIN + "/", timeout=10)  # the page is in the installed package
        assert page.status_code == 200 and "<title>model-supervisor</title>" in page.text
        assert requests.get(ADMIN + "/admin/models", timeout=10).status_code == 401
    except BaseException:
        print(logs())
        raise
    run([*compose, "down", "--timeout", "5"], stack_env)

    # The header's `docker run`, with this test's config: a second container adopts the
    # model the first one started.
    command = header_docker_run().replace("--config model-supervisor.yaml", f"--config {CONFIG}")
    container = run(["bash", "-c", command], {**os.environ, "PWD": str(REPO)}).strip()
    try:
        poll(healthy, 60, "the supervisor started by docker run")
        poll(lambda: model_state({}) == "ready", 10, "the model adopted again")
        assert models.log_lines("chat-fast", "standin: starting") == 1
    except BaseException:
        print(run(["docker", "logs", container])[-3000:])
        raise
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
