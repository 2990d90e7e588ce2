"""What every bench result records: the machine, the command and the time."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# ``python -m bench.all`` points every script at one dated report folder through this variable
RESULTS = Path(os.environ.get("SEMCOMP_BENCH_OUT") or Path(__file__).resolve().parent / "results")


def timeit(fn, min_time: float = 1.0) -> float:
    """Seconds per call: one warm-up, then as many calls as fit in ``min_time``."""
    import time

    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    from semcomp.hardware import cpu_has_bf16

    out = {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "bf16_hw": cpu_has_bf16(), "python": platform.python_version(),
           "hostname": platform.node(), "load_average_1_5_15min": list(os.getloadavg())}  # speed needs the load beside it
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        pass
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:
        pass
    return out


def record(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    out = {"command": "python " + " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git_commit": commit, "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2))
    return path
