"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def peak_memory_gb() -> float:
    """This process's peak resident memory (GB): :func:`DeepRegistrationLib.runtime.peak_resident_gb` (``VmHWM``,
    reset by exec, unlike ``ru_maxrss``, which a child started by fork + exec inherits from its parent)."""
    from DeepRegistrationLib.runtime import peak_resident_gb

    return peak_resident_gb()


def run_measured(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command in its own process: its result, wall time (s) and peak resident memory (GB, from
    ``/usr/bin/time -v``; NaN when it is not reported)."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return result, wall, int(peak.group(1)) / 1024**2 if peak else float("nan")
