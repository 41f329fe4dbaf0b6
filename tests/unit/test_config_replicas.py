"""`replicas:` as an operator writes it: the forms accepted, what each replica runs, and
the errors, each naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supervisor.config import ConfigError, load_config
from supervisor.lifecycle.units import kept_replicas, unit_configs, units_of

HEAD = "compose: {file: models.yml, project: models}\nmodels:\n"
TWO = """
  voxcpm:
    replicas:
      - {service: voxcpm-a, upstream: "http://127.0.0.1:8081", gpus: [3, 4]}
      - {service: voxcpm-b, upstream: "http://127.0.0.1:8082", gpus: [5, 6], vram: 8GiB}
    target_concurrency: 128
    vram: 7.5GiB
"""
PROFILES = """
  step:
    default_profile: 64k
    profiles:
      64k: {max_model_len: 65536}
      long: {max_model_len: 131072, health: /ready}
    replicas:
      - upstream: "http://127.0.0.1:9001"
        profiles: {64k: step-a-64k, long: step-a-long}
      - upstream: "http://127.0.0.1:9002"
        profiles: {64k: step-b-64k, long: step-b-long}
    target_concurrency: 2
    min_replicas: 1
"""


def load(tmp_path: Path, models: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + models)
    return load_config(path)


def problems(tmp_path: Path, models: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, models)
    return caught.value.problems


def test_a_replica_list_gives_each_replica_its_service_upstream_and_gpus(tmp_path: Path) -> None:
    config = load(tmp_path, TWO)
    model = config.models["voxcpm"]  # type: ignore[attr-defined]
    assert (model.target_concurrency, model.min_replicas) == (128, 0)
    units = units_of("voxcpm", model)
    assert [(u.name, u.key) for u in units] == [
        ("voxcpm#1", "models.voxcpm.replicas.0"), ("voxcpm#2", "models.voxcpm.replicas.1")]
    a, b = (u.config for u in units)
    assert (a.profiles["default"].service, a.profiles["default"].upstream) == (
        "voxcpm-a", "http://127.0.0.1:8081")
    assert (b.service, b.upstream, b.gpus) == ("voxcpm-b", "http://127.0.0.1:8082", [5, 6])
    assert (a.vram, b.vram) == (int(7.5 * 2**30), 8 * 2**30)
    assert a.replicas is None and a.idle_timeout == model.idle_timeout
    assert list(unit_configs(config)) == ["voxcpm#1", "voxcpm#2"]  # type: ignore[arg-type]


def test_with_several_profiles_each_replica_names_a_service_per_profile(tmp_path: Path) -> None:
    config = load(tmp_path, PROFILES)
    model = config.models["step"]  # type: ignore[attr-defined]
    assert {n: p.service for n, p in model.profiles.items()} == {
        "64k": "step-a-64k", "long": "step-a-long"}  # the model's own: the first replica's
    b = units_of("step", model)[1].config
    assert {n: (p.service, p.upstream, p.max_model_len, p.health)
            for n, p in b.profiles.items()} == {
        "64k": ("step-b-64k", "http://127.0.0.1:9002", 65536, None),
        "long": ("step-b-long", "http://127.0.0.1:9002", 131072, "/ready")}


def test_a_model_without_replicas_is_its_own_single_unit(tmp_path: Path) -> None:
    config = load(tmp_path, '  chat: {service: chat, upstream: "http://127.0.0.1:9"}\n')
    units = units_of("chat", config.models["chat"])  # type: ignore[attr-defined]
    assert [(u.name, u.key) for u in units] == [("chat", "models.chat")]
    assert units[0].config is config.models["chat"]  # type: ignore[attr-defined]


def model(**settings: object) -> str:
    return yaml.safe_dump({"m": settings}, default_flow_style=True).replace("{m", "  m", 1)[:-2]


A = {"service": "a", "upstream": "http://127.0.0.1:1"}
B = {"service": "b", "upstream": "http://127.0.0.1:2"}


@pytest.mark.parametrize(("settings", "problem"), [
    ({"replicas": [A, B]}, "models.m.target_concurrency: required with several replicas"),
    ({"replicas": [A, {**B, "service": "a"}], "target_concurrency": 2},
     "models.m.replicas.1.service: 'a' is also replicas.0's"),
    ({"replicas": [A, {**B, "upstream": A["upstream"]}], "target_concurrency": 2},
     "models.m.replicas.1.upstream: 'http://127.0.0.1:1' is also replicas.0's"),
    ({"replicas": [A, {"upstream": "http://127.0.0.1:2"}], "target_concurrency": 2},
     "models.m.replicas.1.service: required"),
    ({"replicas": [A], "min_replicas": 2}, "models.m.min_replicas: 2 is more than the 1"),
    ({"service": "x", "replicas": [A]}, "models.m.service: the model's `service` must be"),
    ({"upstream": "http://127.0.0.1:9", "replicas": [A]}, "models.m.upstream: must be left out"),
    ({"replicas": []}, "models.m.replicas: list at least one replica"),
    ({"service": "x", "upstream": "http://127.0.0.1:9", "target_concurrency": 4},
     "models.m.target_concurrency: needs `replicas`"),
    ({"service": "x", "upstream": "http://127.0.0.1:9", "min_replicas": 1},
     "models.m.min_replicas: needs `replicas`"),
    ({"service": "x", "upstream": "http://127.0.0.1:9", "replicas": {"min": 0, "max": 4}},
     "models.m.replicas: {min, max} needs a runtime that can scale"),
    ({"replicas": [{**A, "colour": 1}]}, "models.m.replicas.list[ReplicaConfig].0.colour"),
])
def test_errors_name_the_bad_key(tmp_path: Path, settings: dict[str, object],
                                 problem: str) -> None:
    found = problems(tmp_path, model(**settings))
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize(("replica", "problem"), [
    ({"upstream": "http://127.0.0.1:9003", "profiles": {"64k": "c"}},
     "models.step.replicas.2.profiles: no service for profile(s) long"),
    ({"upstream": "http://127.0.0.1:9003", "service": "c"},
     "models.step.replicas.2.profiles: the model has profiles"),
    ({"upstream": "http://127.0.0.1:9003", "profiles": {"64k": "c", "long": "d", "x": "e"}},
     "models.step.replicas.2.profiles: x is not a profile of the model"),
])
def test_a_replica_of_a_model_with_profiles_names_a_service_for_each(
        tmp_path: Path, replica: dict[str, object], problem: str) -> None:
    extra = "      - " + yaml.safe_dump(replica, default_flow_style=True)
    text = PROFILES.replace("    target_concurrency", extra + "    target_concurrency")
    assert any(p.startswith(problem) for p in problems(tmp_path, text))


SCALED = """runtime: swarm
swarm: {stack: models}
models:
  vox:
    service: vox
    upstream: "http://127.0.0.1:8081"
    replicas: {min: 1, max: 3}
    target_concurrency: 16
"""


def test_a_scaled_service_gives_each_replica_a_slot_of_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(SCALED)
    model = load_config(path).models["vox"]
    units = units_of("vox", model)
    assert [(u.name, u.key, u.config.profiles["default"].service, u.config.service)
            for u in units] == [(f"vox#{n}", "models.vox.replicas", f"vox#{n}", f"vox#{n}")
                                for n in (1, 2, 3)]
    assert {u.config.upstream for u in units} == {"http://127.0.0.1:8081"}
    assert kept_replicas(model) == 1
    assert all(u.config.replicas is None and u.config.target_concurrency is None
               for u in units)
    path.write_text(SCALED.replace("    target_concurrency: 16\n", ""))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(
        "models.vox.target_concurrency: required with replicas.max above 1")
