"""Worker CPU, memory and GPU utilisation sampled during a benchmark.

The parsing of /proc/<pid>/stat, /proc/<pid>/status and ``nvidia-smi`` output is pure; :class:`Sampler` reads them
every ``interval`` seconds in one background task while a configuration runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

DEFAULT_INTERVAL_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NVIDIA_SMI_TIMEOUT_S = 2.0


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
        for pid in self.pids():
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
