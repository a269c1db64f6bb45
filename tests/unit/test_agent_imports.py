"""An agent carries only what it uses: importing it loads no runtime it may never run.

Edge boxes are Raspberry-Pi class (issue 11: idle RSS <= 60 MB, measured by
``bench/agent_footprint.py``): ONNX Runtime and numpy load with the first model, httpx with
an enrolment, and no agent ever loads Redis' client."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "onnxruntime", "redis", "httpx", "docker", "cryptography")


def test_starting_an_agent_loads_no_runtime_it_may_not_run() -> None:
    code = (
        "import json, sys\n"
        "import echo_agent.__main__, echo_agent.app\n"
        "from echo_agent.operators import implementations\n"
        "from echo_agent.runtimes import detect\n"
        "implementations(); detect()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
