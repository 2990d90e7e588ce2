"""Peak-memory measurement for tests that must show an input allocates nothing large."""
from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status")


@contextmanager
def peak_rss_growth():
    """Yields a dict; after the block, ``out["bytes"]`` is how far the peak RSS rose above the RSS at entry.

    On Linux the kernel's high-water mark is reset first (``/proc/self/clear_refs`` <- 5), so a peak left by an
    earlier test cannot hide one inside the block. Elsewhere ``ru_maxrss`` is used, which only sees peaks above
    every earlier one (weaker, never a false failure)."""
    out: dict = {}
    if sys.platform.startswith("linux"):
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_bytes("VmRSS")
        # the reset worked: the mark now sits at the current RSS (a few MB of slack for allocator noise)
        assert _status_bytes("VmHWM") - start < 32 << 20, "could not reset the peak RSS (VmHWM)"
        yield out
        out["bytes"] = _status_bytes("VmHWM") - start
    else:  # macOS reports bytes, others kB
        scale = 1 if sys.platform == "darwin" else 1024
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        yield out
        out["bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - start
