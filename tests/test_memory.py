"""Allocator tuning: large freed blocks are reused instead of being page-faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return out.stdout.strip()


def test_tune_malloc_keeps_large_blocks_in_the_heap():
    # a 64 MB block: glibc mmaps it (threshold at most 32 MB) unless tuned; count minor page faults
    # over ten allocate/write/free cycles: 16k faults each untuned, ~0 once the block is reused.
    # Warm-up first: torch asks for 64-byte aligned memory, slightly more than a freed chunk of the same
    # size holds, so the heap grows for a few cycles until freed chunks coalesce (how many depends on
    # what else is mapped; ~9 with torch alone), then every cycle reuses the heap
    code = """
        import resource, sys
        import torch
        from efficientdet.memory import tune_malloc
        tuned = tune_malloc() if sys.argv[-1] == "tune" else False
        for _ in range(16):  # first uses: faults either way
            torch.empty(16 * 2**20).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.empty(16 * 2**20).fill_(1.0)
        print(tuned, tune_malloc() if tuned else "-", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
    untuned = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "plain"], capture_output=True,
                             text=True, check=True).stdout.split()
    tuned = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "tune"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert untuned[0] == "False" and int(untuned[2]) > 10 * 10_000
    assert tuned[0] == "True" and tuned[1] == "False"  # a second call is a no-op
    assert int(tuned[2]) <= 16_384  # steady state: reuse (one late heap growth at most)


def test_tune_malloc_can_be_turned_off():
    assert _run("from efficientdet.memory import tune_malloc; print(tune_malloc())",
                EFFICIENTDET_MALLOC_TUNING="0") == "False"
