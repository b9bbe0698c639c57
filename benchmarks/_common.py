"""Shared helpers for the benchmark scripts: machine facts, timing, markdown tables, JSON output.

The scripts import this module as ``_common`` (they are run as ``python benchmarks/<name>.py``, which
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def cpu_facts() -> dict[str, Any]:
    """CPU model and flags of interest as /proc/cpuinfo reports them (Linux only; empty elsewhere)."""
    facts: dict[str, Any] = {"logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    first = text.split("\n\n", 1)[0]
    fields: dict[str, str] = {}
    for line in first.splitlines():
        if ":" in line:
            key, val = line.split(":", 1)
            fields[key.strip()] = val.strip()
    facts["model_name"] = fields.get("model name", "?")
    facts["cpu_family"] = fields.get("cpu family")
    facts["model"] = fields.get("model")
    facts["cpu_mhz"] = fields.get("cpu MHz")
    flags = set(fields.get("flags", "").split())
    facts["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags]
    facts["hypervisor"] = "hypervisor" in flags
    return facts


def machine_facts() -> dict[str, Any]:
    """Everything a reader needs to compare timings across machines."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu_facts(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One markdown line summarising :func:`machine_facts`."""
    cpu = m["cpu"]
    desc = cpu.get("model_name", "?")
    if cpu.get("cpu_family"):
        desc += f" (family {cpu['cpu_family']}, model {cpu['model']}, {', '.join(cpu.get('simd', []))})"
    load = m.get("loadavg_at_start")
    load_s = f", load average at start {load[0]:.2f}" if load else ""
    mm = m.get("mmap_threshold", "glibc default")
    mm_s = f"; malloc M_MMAP_THRESHOLD {mm} bytes" if isinstance(mm, int) else "; glibc malloc defaults"
    return (f"CPU: {desc}, {cpu.get('logical_cpus')} logical CPUs{' (VM)' if cpu.get('hypervisor') else ''}; "
            f"torch {m['torch']} with {m['torch_threads']} intra-op threads; Python {m['python']}{mm_s}{load_s}.")


def time_it(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number formatting for tables; None -> an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        ax = abs(x)
        if ax >= 1000:
            return f"{x:,.0f}"
        if ax >= 0.01:
            return f"{x:.{digits}g}" if ax < 100 else f"{x:.0f}"
        return f"{x:.1e}"
    return str(x)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(key, header)]; missing keys print as an em dash."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str))


def set_mmap_threshold(nbytes: int) -> bool:
    """Raise glibc's M_MMAP_THRESHOLD so that large tensors are reused from the heap, not mmap'ed per call.

    With glibc's default, every allocation above the (dynamic, at most 32 MiB) threshold is mmap'ed and
    unmapped on free, so each call of a memory-hungry kernel (``vmap(jacrev)`` through the UNet
    allocates ~1.7 GB) pays millions of minor page faults. Same effect as the environment variable
    ``MALLOC_MMAP_THRESHOLD_``. Returns whether the call succeeded (False off glibc).
    """
    if nbytes <= 0:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(nbytes)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class Contention:
    """CPU time other processes used while a benchmark ran (from /proc/stat minus our own os.times()).

    ``other_cpus`` = their CPU seconds per wall second: 0 on an idle machine, up to the core count
    when every core was busy elsewhere. Timings taken with other_cpus > ~0.3 on 2 cores are noisy.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        busy1 = self._busy()
        if busy1 is None or self.busy0 is None or wall <= 0:
            return {"wall_s": wall, "other_cpus": None}
        other = max(0.0, (busy1 - self.busy0) - (self._own() - self.own0))
        return {"wall_s": wall, "other_cpus": other / wall}


def add_run_args(p: Any) -> None:
    """The flags every cost benchmark shares: threads, glibc mmap threshold, seed, JSON output."""
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="set glibc M_MMAP_THRESHOLD to this many bytes (e.g. 1073741824); 0 = glibc default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all measurements to this JSON file")


def start_run(args: Any) -> dict[str, Any]:
    """Apply ``--threads`` and ``--mmap-threshold`` and return the machine facts to record."""
    torch.set_num_threads(args.threads)
    machine = machine_facts()
    machine["mmap_threshold"] = args.mmap_threshold if set_mmap_threshold(args.mmap_threshold) else "glibc default"
    return machine
