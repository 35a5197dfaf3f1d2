"""Whether bf16 in OpenVINO is faster than float32 in onnxruntime for a file, on this CPU: measured once.

``--precision auto`` takes a reduced precision only where it measured faster on the machine it runs on.
:func:`bf16_measured_faster` times both engines on the file (in a child process: an OpenVINO crash on
an unusual graph must not take the command down) and remembers the answer per file, CPU and thread
count under ``$EFFICIENTDET_CACHE/openvino/probe/``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .onnxrt import make_session
from .ov_runtime import OpenVinoSession, openvino_cache_dir

#: bf16 is chosen by ``auto`` when its median network time is below this fraction of float32 onnxruntime's
PROBE_MARGIN = 0.9


def probe_path(path: Path, threads: int | None) -> Path:
    from .precision import cpu_info

    st = path.stat()
    h = hashlib.sha256(repr((str(path.resolve()), st.st_size, st.st_mtime_ns, threads, cpu_info().name,
                             sorted(cpu_info().flags))).encode()).hexdigest()[:20]
    return openvino_cache_dir() / "probe" / f"{h}.json"


def bf16_measured_faster(path: str | Path, threads: int | None = None, rounds: int = 5) -> bool:
    """Whether the file's network runs faster in OpenVINO bf16 than in onnxruntime float32 on this CPU.

    Measured once per (file, CPU, threads): both engines on the file's input size, interleaved, after a
    warm-up run each; bf16 must take below :data:`PROBE_MARGIN` of float32's median time. The answer is
    kept in ``$EFFICIENTDET_CACHE/openvino/probe/`` so later commands only read it (~1-2 s the first time
    for D0 512, on top of the export). This is how ``--precision auto`` stays "a reduced precision only
    where it measured faster on this CPU" on CPUs nobody measured by hand (an AMX Xeon, say)."""
    import json

    from .precision import cpu_info

    path = Path(path)
    memo = probe_path(path, threads)
    try:
        return bool(json.loads(memo.read_text())["bf16"])
    except (OSError, ValueError, KeyError):
        pass
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "efficientdet.inference.bf16_probe", str(path), str(threads or 0), str(rounds)]
    try:  # in a child process: an OpenVINO crash on an unusual graph must not take the command down
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        record = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
            "bf16": False, "error": f"exit code {done.returncode}: {done.stderr.strip()[-300:]}"}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        record = {"bf16": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    record["cpu"] = cpu_info().name
    _remember(memo, record)
    return bool(record["bf16"])


def _measure(path: Path, threads: int | None, rounds: int) -> dict[str, Any]:
    """Median network ms of onnxruntime float32 and OpenVINO bf16 on ``path`` (interleaved, after a warm-up)."""
    import statistics
    import time

    fp32 = make_session(path, threads)
    try:
        bf16 = OpenVinoSession(path, threads, "bf16")
    except Exception as exc:  # a graph OpenVINO cannot compile: not faster
        return {"bf16": False, "error": str(exc).splitlines()[0][:300]}
    shape = [d or 1 for d in bf16.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(rounds + 1):
        for name, session in (("fp32", fp32), ("bf16", bf16)):
            t0 = time.perf_counter()
            session.run(None, {"images": x})
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"bf16": ms["bf16"] < PROBE_MARGIN * ms["fp32"], "ms": ms}


def _remember(memo: Path, record: dict[str, Any]) -> None:
    import json

    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, memo)
    except OSError:  # a read-only cache: measured again next time
        pass


__all__ = ["PROBE_MARGIN", "bf16_measured_faster", "probe_path"]


if __name__ == "__main__":  # the probe's child process: python -m efficientdet.inference.bf16_probe FILE THREADS ROUNDS
    import json
    import sys

    _file, _threads, _rounds = sys.argv[1], int(sys.argv[2]) or None, int(sys.argv[3])
    print(json.dumps(_measure(Path(_file), _threads, _rounds)))
