"""What the benchmarks read of a process and of the machine, from /proc."""

from __future__ import annotations

import os
from pathlib import Path


def rss_mib(pid: int) -> float:
    """VmRSS (kB in /proc, which means KiB) in MiB, to 0.1; NaN once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def maps_a_file_under(pid: int, directory: str) -> bool:
    """Whether ``pid`` has a file from a folder named ``directory`` mapped: a native library it loaded (e.g. a package's)."""
    return any(f"/{directory}/" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``: a cost that other load on the machine does not distort."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
