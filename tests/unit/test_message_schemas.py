"""The bus contract: exported message schemas match the committed copy; models forbid extras."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from echo_shared import messages
from echo_shared.schemas_export import SCHEMA_FILE, render


def test_committed_schemas_match_the_models() -> None:
    assert SCHEMA_FILE.read_text() == render(), (
        "bus message schemas drifted from shared/echo_shared/schemas/messages.json; "
        "if the change is intended run `make schemas` and commit the result"
    )


@pytest.mark.parametrize("model", messages.ALL_MESSAGES, ids=lambda m: m.__name__)
def test_every_message_forbids_unknown_fields(model: type[messages.Message]) -> None:
    assert model.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError):
        model.model_validate({"surely_not_a_field": 1})


def test_commands_round_trip_through_the_discriminated_union() -> None:
    cmd = messages.StopTask(cmd_id="c1", dataflow="df-1", task="t", generation=3)
    back = messages.COMMAND_ADAPTER.validate_json(cmd.to_bytes())
    assert back == cmd
