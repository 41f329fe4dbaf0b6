"""A runtime that places servers (Swarm) tells each start where its task landed; the handle
then forwards to the configured upstream with that node as its host, and a task that moves
is followed by the next start. On fakes: no Docker, no HTTP."""

from __future__ import annotations

from supervisor.rules.profiles import with_host
from supervisor.rules.table import State
from tests.fakes import Client, make_handle, until

SETTINGS = {"service": "chat", "upstream": "http://127.0.0.1:19201", "health": "/health"}


def test_the_host_is_replaced_and_port_and_path_stay() -> None:
    assert with_host("http://127.0.0.1:19201/v1", "10.0.0.2") == "http://10.0.0.2:19201/v1"
    assert with_host("https://models.internal/x", "10.0.0.2") == "https://10.0.0.2/x"
    assert with_host("http://127.0.0.1:8000", "fd00::2") == "http://[fd00::2]:8000"


async def test_requests_go_to_the_node_the_task_runs_on_and_follow_it_when_it_moves() -> None:
    handle, runtime, _ = make_handle(SETTINGS)
    runtime.auto_ready.add("chat")
    runtime.nodes["chat"] = ["10.0.0.2"]
    runtime.health_urls["chat"] = "http://10.0.0.2:19201/health"  # only there it answers
    try:
        lease = await Client(handle, keep=False).result()
        assert lease.profile.upstream == handle.upstream == "http://10.0.0.2:19201"
        assert handle.state is State.READY

        # Its node is lost; Swarm runs the replacement on another node.
        runtime.exit("chat")
        runtime.nodes["chat"] = ["10.0.0.1"]
        runtime.health_urls["chat"] = "http://10.0.0.1:19201/health"
        handle.container_died()
        assert handle.state is State.FAILED
        lease = await Client(handle, keep=False).result()
        assert lease.cold_start and handle.upstream == "http://10.0.0.1:19201"
        assert runtime.starts == ["chat", "chat"]
    finally:
        await handle.close()


async def test_an_adopted_task_is_served_where_it_runs() -> None:
    handle, runtime, _ = make_handle(SETTINGS)
    runtime.run("chat")
    runtime.nodes["chat"] = ["10.0.0.2"]
    runtime.health_urls["chat"] = "http://10.0.0.2:19201/health"
    try:
        handle.adopt({"chat"})
        await until(lambda: handle.state is State.READY, "adoption")
        assert handle.upstream == "http://10.0.0.2:19201"
        assert runtime.starts == []  # adopted, not started again
    finally:
        await handle.close()


async def test_without_endpoints_the_upstream_stays_as_configured() -> None:
    handle, runtime, _ = make_handle(SETTINGS)
    runtime.auto_ready.add("chat")
    try:
        await Client(handle, keep=False).result()
        assert handle.upstream == "http://127.0.0.1:19201"
    finally:
        await handle.close()
