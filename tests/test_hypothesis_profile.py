"""Hypothesis runs derandomized in CI: the profile from conftest.py draws the same examples every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

# Loads conftest.py as pytest does (its profile applies at import), then runs a property test that
# records what it was given, and prints the profile's settings and the drawn examples.
SCRIPT = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("conftest_under_test", {str(CONFTEST)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
from hypothesis import given, settings, strategies as st
seen = []

@settings(max_examples=20)
@given(st.integers(0, 10**9), st.floats(0, 1))
def record(i, x):
    seen.append([i, x])

record()
print(json.dumps({{"derandomize": settings.default.derandomize, "database": settings.default.database is None,
                  "seen": seen}}))
"""


def _draw(ci: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    if ci is not None:
        env["CI"] = ci
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ci_profile_is_derandomized():
    first, second = _draw("true"), _draw("true")
    assert first["derandomize"] is True and first["database"] is True
    assert len(first["seen"]) >= 10 and first["seen"] == second["seen"]


def test_local_runs_explore():
    first, second = _draw(None), _draw(None)
    assert first["derandomize"] is False
    assert first["seen"] != second["seen"]  # 20 draws from 10^9 integers: equal only by (negligible) chance
