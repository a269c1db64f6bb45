"""Write the JSON Schemas of every bus message to ``schemas/messages.json``.

Run ``python -m echo_shared.schemas_export`` (``make schemas``) after an intended change
to a message; ``tests/unit/test_message_schemas.py`` fails while the copy is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .messages import json_schemas

SCHEMA_FILE = Path(__file__).parent / "schemas" / "messages.json"


def render() -> str:
    return json.dumps(json_schemas(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_FILE.write_text(render())
    sys.stdout.write(f"wrote {SCHEMA_FILE}\n")


if __name__ == "__main__":
    main()
