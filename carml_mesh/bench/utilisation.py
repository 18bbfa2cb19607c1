"""Worker CPU, memory and GPU utilisation sampled during a benchmark.

The parsing of /proc/<pid>/stat, /proc/<pid>/status and ``nvidia-smi`` output is pure; :class:`Sampler` reads them
every ``interval`` seconds in one background task while a configuration runs. A worker counts with its descendants
(a Docker worker's pid is the container's init, the worker process is its child). :func:`snapshot` is one reading of
this node's workers over a short window (``GET /api/node/utilisation``), and :class:`RemoteSampler` polls that
endpoint on another node while a configuration whose target runs there is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

DEFAULT_INTERVAL_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NVIDIA_SMI_TIMEOUT_S = 2.0
DEFAULT_WINDOW_S = 0.2  # a snapshot's CPU window
REMOTE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
FINAL_WINDOW_MS = 50


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces or ')', so fields are counted after the last ')'.
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(rest[11]) + int(rest[12])


def rss_bytes(status: str) -> int:
    """VmRSS from the text of /proc/<pid>/status, in bytes (0 for a zombie, which has none)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, _, unit = line.split(":", 1)[1].strip().partition(" ")
            return int(value) * (1024 if unit.strip().lower() == "kb" else 1)
    return 0


def gpu_percent(nvidia_smi_csv: str) -> float | None:
    """The mean utilisation over the GPUs of ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,...``."""
    values = []
    for line in nvidia_smi_csv.splitlines():
        text = line.strip().removesuffix("%").strip()
        with contextlib.suppress(ValueError):
            values.append(float(text))
    return sum(values) / len(values) if values else None


def cpu_percent(ticks_before: int, ticks_after: int, wall_s: float, ticks_per_s: int = CLOCK_TICKS) -> float:
    """CPU time over wall time, in percent of one core (two busy cores: 200)."""
    if wall_s <= 0:
        return 0.0
    return max(0, ticks_after - ticks_before) / ticks_per_s / wall_s * 100


def parent_pid(stat: str) -> int:
    """The ppid (field 4) from the text of /proc/<pid>/stat."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def gpu_rows(nvidia_smi_csv: str) -> list[dict[str, float | int]]:
    """Per GPU from ``nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,
    nounits``: index, utilisation_percent, memory_used_mb, memory_total_mb (a row it cannot read is left out)."""
    rows: list[dict[str, float | int]] = []
    for line in nvidia_smi_csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4:
            continue
        with contextlib.suppress(ValueError):
            rows.append(
                {
                    "index": int(cells[0]),
                    "utilisation_percent": float(cells[1]),
                    "memory_used_mb": float(cells[2]),
                    "memory_total_mb": float(cells[3]),
                }
            )
    return rows


def _children(pid: int, proc: Path) -> list[int] | None:
    """The children of ``pid`` from /proc/<pid>/task/*/children; None where the kernel does not give that file."""
    out: list[int] = []
    try:
        tasks = os.listdir(proc / str(pid) / "task")
    except OSError:
        return []  # gone
    for task in tasks:
        try:
            text = (proc / str(pid) / "task" / task / "children").read_text()
        except FileNotFoundError:
            return None
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def _children_by_scan(proc: Path) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir(proc) if e.isdecimal()]
    except OSError:
        entries = []
    for entry in entries:
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(parent_pid((proc / entry / "stat").read_text()), []).append(int(entry))
    return children


def process_trees(roots: Sequence[int], proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """Each root pid with its live descendants (itself first); a root that is gone maps to [].

    Read from each process's ``children`` file (a few reads: this runs in the benchmark's event loop); a kernel
    without that file costs one scan of /proc instead."""
    scanned: dict[int, list[int]] | None = None
    trees: dict[int, list[int]] = {}
    for root in roots:
        if not (proc / str(root)).exists():
            trees[root] = []
            continue
        tree, todo = [root], [root]
        while todo:
            pid = todo.pop()
            kids = _children(pid, proc)
            if kids is None:
                scanned = scanned if scanned is not None else _children_by_scan(proc)
                kids = scanned.get(pid, [])
            for child in kids:
                if child not in tree:
                    tree.append(child)
                    todo.append(child)
        trees[root] = tree
    return trees


def _read(pid: int, name: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None


class Sampler:
    """``async with Sampler(pids) as s: ...`` then ``s.summary()``: mean CPU %, peak RSS MB, mean GPU %.

    ``pids()`` is asked at every sample (a worker may restart meanwhile); without pids the CPU and RSS are None.
    """

    def __init__(self, pids: Callable[[], Sequence[int]], *, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.pids = pids
        self.interval = interval
        self.gpu = shutil.which("nvidia-smi") is not None
        self._cpu: list[float] = []
        self._rss: list[int] = []
        self._gpu: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, dict[int, int]] | None = None

    async def __aenter__(self) -> Self:
        self._last = self._cpu_sample()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._sample_cpu()  # the tail since the last tick

    def _cpu_sample(self) -> tuple[float, dict[int, int]]:
        ticks = {}
        roots = list(self.pids())
        for pid in [p for tree in process_trees(roots).values() for p in tree] if roots else []:
            text = _read(pid, "stat")
            if text is not None:
                with contextlib.suppress(ValueError, IndexError):
                    ticks[pid] = cpu_ticks(text)
        return time.monotonic(), ticks

    def _sample_cpu(self) -> None:
        now = self._cpu_sample()
        if self._last is not None and now[1]:
            wall = now[0] - self._last[0]
            if wall >= self.interval / 4:  # too short a window reads mostly tick rounding
                before = self._last[1]
                self._cpu.append(sum(cpu_percent(before.get(p, t), t, wall) for p, t in now[1].items() if p in before))
        self._last = now
        rss = 0
        for pid in now[1]:
            text = _read(pid, "status")
            if text is not None:
                rss += rss_bytes(text)
        if rss:
            self._rss.append(rss)

    async def _gpu_sample(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_SMI_TIMEOUT_S)
        except BaseException as exc:  # a hung nvidia-smi, or the run ended: never leave the process behind
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                return
            raise
        value = gpu_percent(out.decode(errors="replace"))
        if value is not None:
            self._gpu.append(value)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._sample_cpu()
            if self.gpu:
                try:
                    await self._gpu_sample()
                except OSError:
                    self.gpu = False

    def summary(self) -> dict[str, float | None]:
        return {
            "cpu_percent": round(sum(self._cpu) / len(self._cpu), 1) if self._cpu else None,
            "rss_mb": round(max(self._rss) / (1 << 20), 1) if self._rss else None,
            "gpu_percent": round(sum(self._gpu) / len(self._gpu), 1) if self._gpu else None,
        }


async def _nvidia_smi(query: str) -> str | None:
    """``nvidia-smi --query-gpu=QUERY`` as CSV without header or units; None when it is missing, fails or hangs."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            "nvidia-smi",
            f"--query-gpu={query}",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_SMI_TIMEOUT_S)
    except BaseException as exc:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            return None
        raise
    return out.decode(errors="replace") if proc.returncode == 0 else None


def _tree_ticks(trees: dict[int, list[int]]) -> dict[int, int]:
    ticks = {}
    for tree in trees.values():
        for pid in tree:
            text = _read(pid, "stat")
            if text is not None:
                with contextlib.suppress(ValueError, IndexError):
                    ticks[pid] = cpu_ticks(text)
    return ticks


async def snapshot(workers: Sequence[dict[str, Any]], window_s: float = DEFAULT_WINDOW_S) -> dict[str, Any]:
    """One reading of ``workers`` (dicts with framework, device, pid): CPU % over ``window_s`` and resident memory,
    each worker with its descendants; and the GPUs. A worker whose process is gone reads null."""
    trees = process_trees([int(w["pid"]) for w in workers])
    before, t0 = _tree_ticks(trees), time.monotonic()
    gpus_csv, _ = await asyncio.gather(
        _nvidia_smi("index,utilization.gpu,memory.used,memory.total"), asyncio.sleep(window_s)
    )
    after, wall = _tree_ticks(trees), time.monotonic() - t0
    out = []
    for w in workers:
        tree = [p for p in trees.get(int(w["pid"]), []) if p in after]
        rss = [rss_bytes(text) for p in tree if (text := _read(p, "status")) is not None]
        cpu = sum(cpu_percent(before.get(p, after[p]), after[p], wall) for p in tree if p in before)
        out.append(
            {
                "framework": w.get("framework"),
                "device": w.get("device"),
                "pid": int(w["pid"]),
                "processes": len(tree),
                "cpu_percent": round(cpu, 1) if tree else None,
                "rss_mb": round(sum(rss) / (1 << 20), 1) if rss else None,
            }
        )
    return {
        "workers": out,
        "gpus": gpu_rows(gpus_csv) if gpus_csv else [],
        "window_s": round(wall, 3),
        "sampled_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def worker_processes(statistics: dict[str, Any]) -> list[dict[str, Any]]:
    """The alive workers with a host pid, from an executor's ``statistics()``."""
    return [
        {"framework": w.get("framework"), "device": w.get("device"), "pid": int(w["pid"])}
        for w in statistics.get("workers", [])
        if w.get("alive") and isinstance(w.get("pid"), int) and w["pid"] > 0
    ]


def matching(workers: Sequence[dict[str, Any]], framework: str | None, device: str | None) -> list[dict[str, Any]]:
    """The workers that may serve a target of ``framework`` and ``device`` (None: any)."""
    return [
        w
        for w in workers
        if (not framework or w.get("framework") == framework) and (not device or w.get("device") == device)
    ]


class RemoteSampler:
    """``async with RemoteSampler(session, url, framework, device) as s: ...`` then ``s.summary()``, as
    :class:`Sampler` but read from another node's ``GET /api/node/utilisation`` (``url``). A reading that fails
    (the node is slow or gone) is left out; with none, every figure is None."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        framework: str | None,
        device: str | None,
        *,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.session, self.url, self.framework, self.device = session, url, framework, device
        self.interval = interval
        self._cpu: list[float] = []
        self._rss: list[float] = []
        self._gpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if et is None and not self._rss:  # a configuration shorter than one reading still gets one
            await self._read(FINAL_WINDOW_MS)

    def add(self, doc: dict[str, Any]) -> None:
        """One reading of the endpoint into the figures. Pure."""
        workers = matching([w for w in doc.get("workers") or [] if isinstance(w, dict)], self.framework, self.device)
        cpu = [w["cpu_percent"] for w in workers if isinstance(w.get("cpu_percent"), int | float)]
        rss = [w["rss_mb"] for w in workers if isinstance(w.get("rss_mb"), int | float)]
        gpus = [
            g["utilisation_percent"]
            for g in doc.get("gpus") or []
            if isinstance(g, dict) and isinstance(g.get("utilisation_percent"), int | float)
        ]
        if cpu:
            self._cpu.append(float(sum(cpu)))
        if rss:
            self._rss.append(float(sum(rss)))
        if gpus:
            self._gpu.append(sum(gpus) / len(gpus))

    async def _read(self, window_ms: int | None = None) -> None:
        params = {"window_ms": str(window_ms)} if window_ms is not None else None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with self.session.get(
                self.url, params=params, headers={"Accept": "application/json"}, timeout=REMOTE_TIMEOUT
            ) as resp:
                doc = await resp.json(content_type=None)
                if resp.status == 200 and isinstance(doc, dict):
                    self.add(doc)

    async def _loop(self) -> None:
        while True:
            await self._read()
            await asyncio.sleep(self.interval)

    def summary(self) -> dict[str, float | None]:
        return {
            "cpu_percent": round(sum(self._cpu) / len(self._cpu), 1) if self._cpu else None,
            "rss_mb": round(max(self._rss), 1) if self._rss else None,
            "gpu_percent": round(sum(self._gpu) / len(self._gpu), 1) if self._gpu else None,
        }
