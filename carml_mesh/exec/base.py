"""The Executor interface: where a model is loaded and a batch is run."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from ..errors import BadRequest, InferenceFailed, PayloadTooLarge, ServiceError


@dataclass(frozen=True)
class ModelSpec:
    """One model artifact as an executor loads it: (name, version) on (framework, device)."""

    name: str
    version: str
    framework: str
    device: str
    sha256: str
    path: str  # the artifact in the node's store
    spec: dict[str, Any] = field(hash=False, compare=False)  # inputs, outputs, labels: the worker's view

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}/{self.framework}/{self.device}/{self.sha256[:16]}"


def error_from_worker(error: Any) -> Exception:
    """Translate a worker's error reply into the project's error tree."""
    kind = error.get("kind") if isinstance(error, dict) else None
    message = str(error.get("message")) if isinstance(error, dict) else str(error)
    if kind == "bad_input":
        return BadRequest(message)
    if kind == "too_large":
        return PayloadTooLarge(message)
    if kind == "internal":
        return InferenceFailed(message)
    return ServiceError(f"worker error ({kind}): {message}")


class Executor(abc.ABC):
    """Runs inference for the node. Subclasses are async context managers; ``aclose()`` is safe twice."""

    kind: str

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    def frameworks(self) -> dict[str, str]:
        """Framework name -> version this executor can run."""

    @abc.abstractmethod
    def devices(self) -> list[str]: ...

    @abc.abstractmethod
    async def load(self, model: ModelSpec) -> float:
        """Load (once) and return the load time in ms."""

    @abc.abstractmethod
    async def unload(self, model: ModelSpec) -> None: ...

    @abc.abstractmethod
    def is_loaded(self, model: ModelSpec) -> bool: ...

    @abc.abstractmethod
    async def infer(self, model: ModelSpec, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Run one request (``images`` or ``tensors``, optional ``top_k``/``outputs``); returns the worker reply."""

    @abc.abstractmethod
    def statistics(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def in_flight(self) -> int:
        """Requests at this executor now (cheap: read on every routed request)."""

    def worker_pids(self) -> list[int]:
        """Worker processes of this host that the node may kill when its bounded shutdown runs out; none by
        default (a container's removal is its engine's)."""
        return []
