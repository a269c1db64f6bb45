"""The OpenAPI document is a contract: a Schemathesis fuzz run over the live API.

Every operation of the master's ``/openapi.json`` gets generated requests (valid and
invalid) with an admin token over HTTPS; every answer must be no 5xx, have a documented
status code, content type and headers, and a body matching the documented schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import PlatformFactory

pytestmark = pytest.mark.e2e

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 25  # per operation


def test_every_answer_matches_the_openapi_document(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    p, _ = platform_factory((AgentSpec("edge-1", "edge", input_streams=("taxi-feed",)),))
    assert p.brokers.bundle is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env["SCHEMATHESIS_HOOKS"] = ""
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{p.api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {p.admin_token}",
            "--tls-verify",
            str(p.brokers.bundle.ca_file),
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
            # POST /api/v1/enrol takes a one-time enrolment token as its bearer, not an API token
            "--exclude-path",
            "/api/v1/enrol",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    tail = (run.stdout + run.stderr)[-30000:]
    assert run.returncode == 0, tail
    assert "No issues found" in run.stdout or "passed" in run.stdout.lower(), tail
