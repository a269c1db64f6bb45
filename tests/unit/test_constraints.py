"""Hard constraints of placement, one by one, and the validation of affinity references."""

from __future__ import annotations

from typing import Any

import pytest

from echo_scheduler.placing import place
from echo_scheduler.validating import problems
from echo_shared.errors import PlacementError
from echo_shared.models import DataflowSpec, DeviceRecord


def dev(i: str, tier: str = "cloud", **kw: Any) -> DeviceRecord:
    kw.setdefault("capacity", {"cpu": 1.0, "memory_mb": 1024})
    kw.setdefault("runtimes", ["python"])
    return DeviceRecord.model_validate({"id": i, "tier": tier, **kw})


def task(tid: str, op: str = "io.generate", **kw: Any) -> dict[str, Any]:
    config = {"count": 1} if op == "io.generate" else kw.pop("config", {})
    return {"id": tid, "operator": op, "config": config, **kw}


def spec(*tasks: dict[str, Any], edges: tuple[tuple[str, str], ...] = ()) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {"name": "c", "tasks": list(tasks), "edges": [{"from": a, "to": b} for a, b in edges]}
    )


def devices(s: DataflowSpec, fleet: list[DeviceRecord], **kw: Any) -> dict[str, str]:
    return {t.task: t.device for t in place("df", s, fleet, **kw).tasks}


def test_online() -> None:
    fleet = [dev("a", status="unreachable"), dev("b", status="lost"), dev("c")]
    p = place("df", spec(task("g")), fleet)
    assert p.tasks[0].device == "c" and "online" in p.tasks[0].satisfied
    with pytest.raises(PlacementError, match="no device satisfies online"):
        place("df", spec(task("g")), fleet[:2])


def test_explicit_device() -> None:
    fleet = [dev("a"), dev("b")]
    assert devices(spec(task("g", placement={"device": "b"})), fleet) == {"g": "b"}
    with pytest.raises(PlacementError, match="no device satisfies device zz"):
        place("df", spec(task("g", placement={"device": "zz"})), fleet)


def test_tier_one_or_several() -> None:
    fleet = [dev("e", "edge"), dev("f", "fog"), dev("c", "cloud")]
    assert devices(spec(task("g", placement={"tier": "fog"})), fleet) == {"g": "f"}
    got = devices(spec(task("g", placement={"tier": ["edge", "fog"]})), fleet)
    assert got["g"] in {"e", "f"}
    with pytest.raises(PlacementError, match="tier cloud"):
        place("df", spec(task("g", placement={"tier": "cloud"})), fleet[:2])


def test_input_stream() -> None:
    fleet = [dev("a"), dev("b", input_streams=["cam"])]
    assert devices(spec(task("g", placement={"input_stream": "cam"})), fleet) == {"g": "b"}
    with pytest.raises(PlacementError, match="input stream mic"):
        place("df", spec(task("g", placement={"input_stream": "mic"})), fleet)


def test_labels_all_must_match() -> None:
    fleet = [dev("a", labels={"zone": "x"}), dev("b", labels={"zone": "x", "gpu": "yes"})]
    got = devices(spec(task("g", placement={"labels": {"zone": "x", "gpu": "yes"}})), fleet)
    assert got == {"g": "b"}
    with pytest.raises(PlacementError, match="label zone=y"):
        place("df", spec(task("g", placement={"labels": {"zone": "y"}})), fleet)


def test_runtime_of_the_operator() -> None:
    fleet = [dev("py"), dev("proc", runtimes=["python", "process"])]
    proc = task("p", "process", config={"command": ["cat"]})
    s = spec(task("g"), proc, edges=(("g", "p"),))
    assert devices(s, fleet)["p"] == "proc"
    user = task("u", "python:mypkg.ops:Thing")
    assert devices(spec(user), [dev("none", runtimes=[]), dev("py")]) == {"u": "py"}
    with pytest.raises(PlacementError, match="runtime process"):
        place("df", s, [dev("py")])


def test_cpu_and_memory_with_reservations() -> None:
    fleet = [dev("a"), dev("b")]
    big = task("g", resources={"cpu": 0.7, "memory_mb": 600})
    assert devices(spec(big), fleet, reserved={"a": (0.5, 0.0)}) == {"g": "b"}
    assert devices(spec(big), fleet, reserved={"a": (0.0, 600.0)}) == {"g": "b"}
    with pytest.raises(PlacementError, match=r"600 MiB free"):
        place("df", spec(big), fleet, reserved={"a": (0.0, 600.0), "b": (0.0, 500.0)})


def test_accelerators_are_counted_and_reserved() -> None:
    fleet = [dev("a", accelerators={"gpu": 1}), dev("b", accelerators={"gpu": 2}), dev("c")]
    need = {"accelerators": {"gpu": 1}}
    s = spec(*(task(f"g{i}", placement=need) for i in range(3)))
    got = devices(s, fleet)
    assert sorted(got.values()).count("b") == 2 and "a" in got.values() and "c" not in got.values()
    with pytest.raises(PlacementError, match="1 gpu free"):
        place("df", spec(*(task(f"g{i}", placement=need) for i in range(4))), fleet)
    # what other dataflows hold counts too
    with pytest.raises(PlacementError, match="1 gpu free"):
        place(
            "df",
            spec(task("g", placement=need)),
            fleet,
            reserved={"a": (0, 0, {"gpu": 1}), "b": (0, 0, {"gpu": 2})},
        )
    got = devices(spec(task("g", placement=need)), fleet, reserved={"b": (0, 0, {"gpu": 2})})
    assert got == {"g": "a"}


def test_colocation_puts_a_group_on_one_device_with_its_resources_summed() -> None:
    fleet = [dev("a", capacity={"cpu": 1}), dev("b", capacity={"cpu": 2})]
    heavy = {"cpu": 0.6}
    s = spec(
        task("g", resources=heavy),
        task("x", "core.passthrough", resources=heavy, placement={"colocate_with": ["g"]}),
        edges=(("g", "x"),),
    )
    p = place("df", s, fleet)
    assert p.device_of("g") == p.device_of("x") == "b"  # 1.2 CPU fits only there
    x = next(t for t in p.tasks if t.task == "x")
    assert "co-located with g" in x.satisfied
    with pytest.raises(PlacementError, match=r"1\.2 CPU free"):
        place("df", s, fleet[:1])


def test_colocation_is_transitive_and_respects_every_members_constraints() -> None:
    fleet = [dev("e", "edge", input_streams=["cam"]), dev("c", "cloud"), dev("e2", "edge")]
    s = spec(
        task("g", placement={"input_stream": "cam"}),
        task("a", "core.passthrough", placement={"colocate_with": ["g"]}),
        task("b", "core.passthrough", placement={"colocate_with": ["a"]}),
        edges=(("g", "a"), ("a", "b")),
    )
    assert set(devices(s, fleet).values()) == {"e"}


def test_anti_affinity_keeps_tasks_apart() -> None:
    fleet = [dev("a", capacity={"cpu": 8}), dev("b")]
    s = spec(task("g1"), task("g2", placement={"anti_affinity": ["g1"]}))
    got = devices(s, fleet)
    assert got["g1"] != got["g2"]
    with pytest.raises(PlacementError, match="anti-affinity"):
        place("df", s, fleet[:1])


def test_satisfied_lists_every_hard_constraint_met() -> None:
    fleet = [dev("b", "fog", labels={"zone": "x"}, input_streams=["cam"], accelerators={"gpu": 1})]
    t = task(
        "g",
        placement={"tier": "fog", "labels": {"zone": "x"}, "input_stream": "cam", "accelerators": {"gpu": 1}},
    )
    (tp,) = place("df", spec(t), fleet).tasks
    assert tp.satisfied == [
        "online",
        "tier fog",
        "input stream cam",
        "label zone=x",
        "runtime python",
        "0.1 CPU free",
        "32 MiB free",
        "1 gpu free",
    ]


# ------------------------------------------------------------------ validation


def locs(s: DataflowSpec) -> dict[str, str]:
    return {p.loc: p.msg for p in problems(s)}


def test_affinity_to_unknown_tasks_is_located() -> None:
    found = locs(
        spec(
            task("g"),
            task("h", placement={"colocate_with": ["g", "nope"], "anti_affinity": ["ghost"]}),
        )
    )
    assert "no task with id 'nope'" in found["tasks[1].placement.colocate_with[1]"]
    assert "no task with id 'ghost'" in found["tasks[1].placement.anti_affinity[0]"]


@pytest.mark.parametrize(
    ("tasks", "loc", "needle"),
    [
        (
            [
                task("g", placement={"device": "a"}),
                task("h", placement={"device": "b", "colocate_with": ["g"]}),
            ],
            "tasks[1].placement.device",
            "pinned to b and a",
        ),
        (
            [
                task("g", placement={"tier": "edge"}),
                task("h", placement={"tier": "cloud", "colocate_with": ["g"]}),
            ],
            "tasks[1].placement.tier",
            "no tier is allowed for both",
        ),
        (
            [task("g"), task("h", placement={"colocate_with": ["g"], "anti_affinity": ["g"]})],
            "tasks[1].placement.anti_affinity[0]",
            "must share a device",
        ),
        (
            [
                task("g", placement={"device": "a"}),
                task("h", placement={"device": "a", "anti_affinity": ["g"]}),
            ],
            "tasks[1].placement.anti_affinity[0]",
            "both pinned to a",
        ),
        ([task("g", placement={"anti_affinity": ["g"]})], "tasks[0].placement.anti_affinity[0]", "itself"),
    ],
)
def test_contradictory_pins_are_reported(tasks: list[dict[str, Any]], loc: str, needle: str) -> None:
    found = locs(spec(*tasks))
    assert loc in found, found
    assert needle in found[loc]
