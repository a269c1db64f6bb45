"""Deploy order and command building."""

from __future__ import annotations

from echo_master.commands import deploy_command, deploy_levels
from echo_shared.models import ChannelSpec, DataflowSpec, Placement, TaskPlacement, TaskRecord


def make(edges: list[tuple[str, str]], ids: list[str]) -> DataflowSpec:
    tasks = [{"id": ids[0], "operator": "io.generate", "config": {"count": 1}}]
    tasks += [{"id": i, "operator": "core.passthrough"} for i in ids[1:]]
    return DataflowSpec.model_validate(
        {"name": "t", "tasks": tasks, "edges": [{"from": a, "to": b} for a, b in edges]}
    )


def test_a_deployment_is_one_wave_whatever_the_depth() -> None:
    s = make([("g", "a"), ("a", "c"), ("g", "b"), ("b", "c")], ["g", "a", "b", "c"])
    assert deploy_levels(s) == [["g", "a", "b", "c"]]


def test_deploy_command_wires_both_ends() -> None:
    s = make([("g", "a")], ["g", "a"])
    placement = Placement(
        tasks=[
            TaskPlacement(task="g", device="d1", reason="r"),
            TaskPlacement(task="a", device="d2", reason="r"),
        ],
        channels=[ChannelSpec(from_task="g", to_task="a", topic="echo/df/x/g/a")],
    )
    cmd = deploy_command("x", s, placement, TaskRecord(id="a", operator="core.passthrough", generation=4))
    assert cmd.generation == 4 and cmd.task == "a"
    assert [(b.peer, b.topic) for b in cmd.inputs] == [("g", "echo/df/x/g/a")]
    assert cmd.outputs == []
    src = deploy_command("x", s, placement, TaskRecord(id="g", operator="io.generate", generation=1))
    assert [(b.peer, b.topic) for b in src.outputs] == [("a", "echo/df/x/g/a")]
