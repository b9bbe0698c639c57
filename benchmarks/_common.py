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
    return (f"CPU: {desc}, {cpu.get('logical_cpus')} logical CPUs{' (VM)' if cpu.get('hypervisor') else ''}; "
            f"torch {m['torch']} with {m['torch_threads']} intra-op threads; Python {m['python']}{load_s}.")


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
        return str(x)
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
