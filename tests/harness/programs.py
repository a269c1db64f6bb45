"""The ``python3`` that programs of the process runtime find on their PATH (``SAFE_PATH``).

ECHO runs on Python, so a machine that runs these tests has one there (Debian's
``/usr/bin/python3``, or a Python image's ``/usr/local/bin/python3``). Where it has not,
the tests that start such programs fail naming the path, rather than skip: the process
runtime would not work on that machine either.
"""

from __future__ import annotations

import shutil

from echo_agent.runtimes.sandbox import SAFE_PATH


def safe_python3() -> str:
    found = shutil.which("python3", path=SAFE_PATH)
    if found is None:
        raise RuntimeError(f"no python3 on {SAFE_PATH}: the process runtime's programs find none either")
    return found
