"""The body of POST /api/benchmarks into a frozen :class:`BenchConfig`, or BadRequest naming the field. Pure.

What the mesh serves (models, frameworks, members) comes in as :class:`Offers`, so this module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BadRequest
from . import stats

SCENARIOS = ("single-stream", "server", "offline")
INPUTS = ("sample", "random")
MAX_TARGETS = 16
MAX_SWEEP = 16  # values in batch_sizes or concurrency
MAX_POINTS = 256  # targets x batch sizes x concurrencies
MAX_CONCURRENCY = 256
MAX_QPS = 100_000.0
MAX_DURATION_S = 3600.0
MAX_MIN_QUERIES = stats.DEFAULT_MAX_QUERIES  # a configuration stops at this many queries (memory, rows)
MAX_WARMUP = 10_000
MAX_BOUND_MS = 600_000.0
MAX_NAME = 100
DEFAULT_CONCURRENCY = {"single-stream": 1, "server": 16, "offline": 4}
_FIELDS = (
    "name",
    "scenario",
    "targets",
    "batch_sizes",
    "concurrency",
    "qps",
    "p99_bound_ms",
    "min_queries",
    "min_duration_s",
    "max_duration_s",
    "warmup_queries",
    "seed",
    "input",
)
_TARGET_FIELDS = ("model", "version", "framework", "device", "node")


@dataclass(frozen=True)
class Offers:
    """What the mesh can serve: model name -> frameworks, and the members' ids and names."""

    models: Mapping[str, frozenset[str]]
    nodes: frozenset[str]
    max_batch: int


@dataclass(frozen=True)
class Target:
    """A model to run, as /api/predict takes it (a benchmark's target, an evaluation's model)."""

    model: str
    version: str | None = None
    framework: str | None = None
    device: str | None = None
    node: str | None = None  # pin: run on this member (id or name)

    def label(self) -> str:
        parts = [self.model + (f"@{self.version}" if self.version else "")]
        parts += [p for p in (self.framework, self.device) if p]
        return "/".join(parts) + (f" on {self.node}" if self.node else "")


@dataclass(frozen=True)
class BenchConfig:
    scenario: str
    targets: tuple[Target, ...]
    batch_sizes: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = (1,)
    qps: float | None = None
    p99_bound_ms: float | None = None
    min_queries: int = stats.DEFAULT_MIN_QUERIES["single-stream"]
    min_duration_s: float = stats.DEFAULT_MIN_DURATION_S
    max_duration_s: float = stats.DEFAULT_MAX_DURATION_S
    warmup_queries: int = stats.DEFAULT_WARMUP_QUERIES
    seed: int = 0
    input: str = "sample"
    name: str = ""

    @property
    def rule(self) -> stats.StopRule:
        return stats.StopRule(self.min_queries, self.min_duration_s, self.max_duration_s)

    def points(self) -> list[tuple[int, Target, int, int]]:
        """(target index, target, batch size, concurrency), in the order they run."""
        return [(i, t, b, c) for i, t in enumerate(self.targets) for b in self.batch_sizes for c in self.concurrency]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["targets"] = [{k: v for k, v in asdict(t).items() if v is not None} for t in self.targets]
        doc["batch_sizes"] = list(self.batch_sizes)
        doc["concurrency"] = list(self.concurrency)
        return doc


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise BadRequest(f"{where}: must be an integer ≥ {lo}, got {value!r}")
    if value < lo:
        raise BadRequest(f"{where}: must be an integer ≥ {lo}, got {value}")
    if value > hi:
        raise BadRequest(f"{where}: must be at most {hi}, got {value}")
    return int(value)


def _number(value: Any, where: str, hi: float, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{where}: must be a number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise BadRequest(f"{where}: must be positive, got {value:g}")
    if value < 0:
        raise BadRequest(f"{where}: must not be negative, got {value:g}")
    if value > hi:
        raise BadRequest(f"{where}: must be at most {hi:g}, got {value:g}")
    return float(value)


def _str(value: Any, where: str, *, max_len: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where}: must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise BadRequest(f"{where}: longer than {max_len} characters")
    return value.strip()


def _int_list(value: Any, where: str, lo: int, hi: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{where}: must be a non-empty list of integers")
    if len(value) > MAX_SWEEP:
        raise BadRequest(f"{where}: at most {MAX_SWEEP} values, got {len(value)}")
    out = tuple(_int(v, f"{where}[{n}]", lo, hi) for n, v in enumerate(value))
    if len(set(out)) != len(out):
        raise BadRequest(f"{where}: lists a value twice")
    return out


def _target(doc: Any, where: str, offers: Offers) -> Target:
    if isinstance(doc, str):
        doc = {"model": doc}
    if not isinstance(doc, dict):
        raise BadRequest(f"{where}: must be an object with model and optionally version, framework, device, node")
    unknown = sorted(str(k) for k in doc if k not in _TARGET_FIELDS)
    if unknown:
        raise BadRequest(f"{where}.{unknown[0]}: unknown field; a target has {', '.join(_TARGET_FIELDS)}")
    if "model" not in doc:
        raise BadRequest(f"{where}.model: is required")
    model = _str(doc["model"], f"{where}.model")
    if model not in offers.models:
        known = ", ".join(sorted(offers.models)) or "nothing"
        raise BadRequest(f"{where}.model: unknown model {model!r}; the mesh serves {known}")
    opt = {k: _str(doc[k], f"{where}.{k}") if doc.get(k) is not None else None for k in _TARGET_FIELDS[1:]}
    framework = opt["framework"]
    if framework is not None and framework not in offers.models[model]:
        have = ", ".join(sorted(offers.models[model]))
        raise BadRequest(f"{where}.framework: model {model} has no {framework!r} deployment; it has {have}")
    node = opt["node"]
    if node is not None and node not in offers.nodes:
        raise BadRequest(f"{where}.node: unknown node {node!r}; members: {', '.join(sorted(offers.nodes))}")
    return Target(model, opt["version"], framework, opt["device"], node)


def parse_config(doc: Any, offers: Offers) -> BenchConfig:
    """Validate the request body; every error names its field, e.g. ``targets[1].model: unknown model 'x'``."""
    if not isinstance(doc, dict):
        raise BadRequest(f"the body must be a JSON object with {', '.join(_FIELDS)}")
    unknown = sorted(str(k) for k in doc if k not in _FIELDS)
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field; fields are {', '.join(_FIELDS)}")
    scenario = doc.get("scenario")
    if scenario not in SCENARIOS:
        raise BadRequest(f"scenario: must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    targets_doc = doc.get("targets")
    if not isinstance(targets_doc, list) or not targets_doc:
        raise BadRequest("targets: must be a non-empty list of {model, version?, framework?, device?, node?}")
    if len(targets_doc) > MAX_TARGETS:
        raise BadRequest(f"targets: at most {MAX_TARGETS} targets, got {len(targets_doc)}")
    targets = tuple(_target(t, f"targets[{n}]", offers) for n, t in enumerate(targets_doc))
    batch_sizes = _int_list(doc.get("batch_sizes", [1]), "batch_sizes", 1, offers.max_batch)
    concurrency = _int_list(doc.get("concurrency", [DEFAULT_CONCURRENCY[scenario]]), "concurrency", 1, MAX_CONCURRENCY)
    if scenario == "single-stream" and concurrency != (1,):
        raise BadRequest("concurrency: single-stream issues one query at a time; leave it out or give [1]")
    points = len(targets) * len(batch_sizes) * len(concurrency)
    if points > MAX_POINTS:
        raise BadRequest(f"batch_sizes: targets x batch sizes x concurrency makes {points} runs; at most {MAX_POINTS}")
    qps = _number(doc["qps"], "qps", MAX_QPS) if doc.get("qps") is not None else None
    bound = _number(doc["p99_bound_ms"], "p99_bound_ms", MAX_BOUND_MS) if doc.get("p99_bound_ms") is not None else None
    if scenario != "server":
        for key, value in (("qps", qps), ("p99_bound_ms", bound)):
            if value is not None:
                raise BadRequest(f"{key}: only the server scenario takes it")
    elif qps is None and bound is None:
        raise BadRequest("qps: the server scenario needs an offered load (qps) or a latency bound (p99_bound_ms)")
    min_queries = (
        _int(doc["min_queries"], "min_queries", 1, MAX_MIN_QUERIES)
        if doc.get("min_queries") is not None
        else stats.DEFAULT_MIN_QUERIES[scenario]
    )
    min_duration = (
        _number(doc["min_duration_s"], "min_duration_s", MAX_DURATION_S, positive=False)
        if doc.get("min_duration_s") is not None
        else stats.DEFAULT_MIN_DURATION_S
    )
    max_duration = (
        _number(doc["max_duration_s"], "max_duration_s", MAX_DURATION_S)
        if doc.get("max_duration_s") is not None
        else max(stats.DEFAULT_MAX_DURATION_S, min_duration)
    )
    if max_duration < min_duration:
        raise BadRequest(f"max_duration_s: {max_duration:g} is shorter than min_duration_s {min_duration:g}")
    if qps is not None and qps * min_duration > MAX_MIN_QUERIES:
        raise BadRequest(
            f"qps: {qps:g} qps for min_duration_s {min_duration:g} makes {qps * min_duration:.0f} queries per "
            f"configuration; at most {MAX_MIN_QUERIES} (lower one of them)"
        )
    warmup = (
        _int(doc["warmup_queries"], "warmup_queries", 0, MAX_WARMUP)
        if doc.get("warmup_queries") is not None
        else stats.DEFAULT_WARMUP_QUERIES
    )
    seed = _int(doc["seed"], "seed", 0, 2**63 - 1) if doc.get("seed") is not None else 0
    input_kind = doc.get("input", "sample")
    if input_kind not in INPUTS:
        raise BadRequest(f"input: must be one of {', '.join(INPUTS)}, got {input_kind!r}")
    name = _str(doc["name"], "name", max_len=MAX_NAME) if doc.get("name") is not None else ""
    return BenchConfig(
        scenario=scenario,
        targets=targets,
        batch_sizes=batch_sizes,
        concurrency=concurrency,
        qps=qps,
        p99_bound_ms=bound,
        min_queries=min_queries,
        min_duration_s=min_duration,
        max_duration_s=max_duration,
        warmup_queries=warmup,
        seed=seed,
        input=input_kind,
        name=name or f"{scenario}: {', '.join(t.label() for t in targets)}"[:MAX_NAME],
    )
