"""Any node serves any model of the mesh: find the capable members, choose, run here or forward, retry elsewhere.

Every request gets an answer or an explicit error within its deadline: a peer that cannot be reached, answers 5xx
or times out is avoided for a while and the next candidate is tried (inference is idempotent); a client error (4xx)
is the same answer anywhere and is returned at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..dataplane.types import Attempt, InferReply, InferRequest, Route, RouteCandidate
from ..errors import CarmlError, NotFound, RequestError, WorkerUnavailable
from ..gossip.messages import State
from .forward import Forwarder, ForwardError
from .inference import InferenceService
from .mesh import Mesh
from .router import Candidate, Decision, Router

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..trace.setup import Tracing

log = logging.getLogger("carml.routing")


def _matches(key: str, name: str, version: str | None, framework: str | None, device: str | None) -> bool:
    """A warm key 'name@version/framework/device' against what a request asks for."""
    model, _, rest = key.partition("@")
    ver, _, rest = rest.partition("/")
    fw, _, dev = rest.partition("/")
    return (
        model == name
        and (not version or ver == version)
        and (not framework or fw == framework)
        and (not device or dev == device)
    )


class RoutedInference:
    def __init__(
        self,
        node_id: str,
        local: InferenceService,
        mesh: Mesh | None,
        forwarder: Forwarder,
        *,
        warm: Callable[[], list[str]],
        load: Callable[[], int],
        router: Router | None = None,
    ) -> None:
        self.node_id = node_id
        self.local = local
        self.mesh = mesh
        self.forwarder = forwarder
        self.router = router or Router()
        self._warm = warm
        self._load = load
        self.forwarded = 0
        self.retries = 0
        self.tracing: Tracing | None = None  # set by the node
        self._alone = Route(node_id, "no peer in the mesh", (), (Attempt(node_id, True),))

    # --- who can serve it -----------------------------------------------------------------------------------------

    def _local_capable(self, name: str, version: str | None, framework: str | None, device: str | None) -> bool:
        try:
            model = self.local.catalog.get(name, version)
            self.local.select(model, framework, device)
        except CarmlError:
            return False
        return True

    def candidates(self, name: str, version: str | None, framework: str | None, device: str | None) -> list[Candidate]:
        peers = self._peer_candidates(name, version, framework, device)
        if self._local_capable(name, version, framework, device):
            # warm and load matter only against peers: a node alone skips computing them on the hot path
            warm = bool(peers) and any(_matches(k, name, version, framework, device) for k in self._warm())
            return [Candidate(self.node_id, None, warm, float(self._load()) if peers else 0.0), *peers]
        return peers

    def _peer_candidates(
        self, name: str, version: str | None, framework: str | None, device: str | None
    ) -> list[Candidate]:
        found: list[Candidate] = []
        if self.mesh is None or self.mesh.gossip is None:
            return found
        for member in self.mesh.gossip.members():
            card = self.mesh.cards.get(member.name)
            if member.name == self.node_id or member.state != State.ALIVE or not card:
                continue
            offers = any(
                m.get("name") == name
                and (not version or m.get("version") == version)
                and (not framework or m.get("framework") == framework)
                and m.get("available")
                for m in card.get("models") or []
            )
            if not offers or (device and device not in (card.get("devices") or [])):
                continue
            port = member.meta.get("http")
            url = f"http://{member.addr[0]}:{port}" if isinstance(port, int) else card.get("url")
            warm = any(_matches(k, name, version, framework, device) for k in card.get("warm") or [])
            load = member.meta.get("l", 0)
            health = self.router.health(member.name)
            found.append(
                Candidate(
                    member.name, url, warm, float(load if isinstance(load, int | float) else 0), health.latency_ms
                )
            )
        return found

    def _offers(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(model, version, framework, devices) that some member of the mesh serves."""
        offers = []
        devices = tuple(d.split(":")[0] for d in self.local.executor.devices())
        for m in self.local.catalog:
            for fw in m.available_frameworks():
                offers.append((m.name, m.version, fw, tuple(d for d in devices if d in m.manifest.devices)))
        if self.mesh is not None:
            for card in self.mesh.cards.values():
                card_devices = tuple(str(d) for d in card.get("devices") or [])
                for m in card.get("models") or []:
                    if m.get("available"):
                        offers.append(
                            (str(m.get("name")), str(m.get("version")), str(m.get("framework")), card_devices)
                        )
        return offers

    def _nowhere(self, name: str, version: str | None, framework: str | None, device: str | None) -> NotFound:
        """The 404 that names what the mesh does serve, at the first constraint nobody meets."""
        offers = self._offers()
        named = [o for o in offers if o[0] == name]
        if not named:
            known = ", ".join(sorted({o[0] for o in offers})) or "nothing"
            return NotFound(f"unknown model {name!r}; the mesh serves: {known}")
        versioned = [o for o in named if not version or o[1] == version]
        if not versioned:
            versions = ", ".join(sorted({o[1] for o in named}, reverse=True))
            return NotFound(f"model {name!r} has no version {version!r}; versions: {versions}")
        framed = [o for o in versioned if not framework or o[2] == framework]
        if not framed:
            return NotFound(
                f"model {name} has no {framework} artifact; it has {', '.join(sorted({o[2] for o in versioned}))}"
            )
        devices = sorted({d for o in framed for d in o[3]})
        return NotFound(
            f"device {device!r} is not available for {name} in the mesh; devices: {', '.join(devices) or 'none'}"
        )

    # --- running it -----------------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferReply:
        """The one routing entry: every protocol's request is served here or on the peer the router chooses."""
        hop = request.hop
        budget = min(self.local.timeout, hop.timeout) if hop.timeout else self.local.timeout
        if hop.forwarded:  # a peer chose us: serve here, never forward again
            return await self.local.infer(request, timeout=budget)
        if request.node is None and not self._has_peers():
            # alone in the mesh (or no mesh): nothing to choose, no decision on the hot path
            reply = await self.local.infer(request, timeout=budget)
            return replace(reply, route=self._alone)
        with self._span("route") as span:
            decision = self.decide(request.model, request.version, request.framework, request.device, node=request.node)
            if span is not None:
                span.set_attributes(
                    {
                        "carml.route.candidates": [
                            f"{c.node} local={c.local} warm={c.warm} load={c.load:g}" for c in decision.candidates
                        ],
                        "carml.route.choice": decision.order[0].node if decision.order else "",
                        "carml.route.reason": decision.reason,
                        "carml.route.order": [c.node for c in decision.order],
                    }
                )

        async def run(c: Candidate, t: float) -> InferReply:
            if c.local:
                return await self.local.infer(request, timeout=t)
            from opentelemetry.trace import SpanKind

            attributes = {"carml.peer.id": c.node, "carml.peer.url": str(c.url), "http.method": "POST"}
            with self._span("forward /api/predict", kind=SpanKind.CLIENT, attributes=attributes) as span:
                trace = self._hop_headers(span, hop.trace)
                return await self.forwarder.infer(str(c.url), request, timeout=t, trace=trace)

        reply, attempts = await self._attempt(decision, budget, run)
        route = Route(
            chosen=decision.order[0].node if decision.order else None,
            reason=decision.reason,
            candidates=tuple(
                RouteCandidate(c.node, c.local, c.warm, c.load, c.latency_ms) for c in decision.candidates
            ),
            attempts=attempts,
        )
        return replace(reply, route=route)

    def _has_peers(self) -> bool:
        return self.mesh is not None and bool(self.mesh.cards)

    def _span(self, name: str, **kw: Any) -> contextlib.AbstractContextManager[Span | None]:
        if self.tracing is None:
            return contextlib.nullcontext(None)
        return self.tracing.span(name, **kw)

    def _hop_headers(self, hop: Span | None, incoming: Mapping[str, str]) -> dict[str, str]:
        """The trace headers for a peer: our CLIENT span as its parent, and the request's trace level."""
        if self.tracing is None:
            return dict(incoming)
        from ..trace.setup import LEVEL_HEADER, LEVELS, current_level, inject

        headers = inject(hop) if hop is not None else dict(incoming)
        headers[LEVEL_HEADER] = LEVELS[current_level()]
        return headers

    def decide(
        self, name: str, version: str | None, framework: str | None, device: str | None, *, node: str | None = None
    ) -> Decision:
        candidates = self.candidates(name, version, framework, device)
        if not candidates:
            raise self._nowhere(name, version, framework, device)
        if node:
            pinned = [c for c in candidates if node in (c.node, self._name_of(c))]
            if not pinned:
                able = ", ".join(sorted(str(self._name_of(c)) for c in candidates))
                raise NotFound(f"node {node!r} cannot serve {name}; members that can: {able}")
            candidates = pinned
        return self.router.decide(candidates)

    def _name_of(self, candidate: Candidate) -> str | None:
        if candidate.local:
            return self.local.node.name
        card = self.mesh.cards.get(candidate.node) if self.mesh is not None else None
        return card.get("name") if card else None

    async def _attempt(
        self, decision: Decision, budget: float, run: Callable[[Candidate, float], Awaitable[InferReply]]
    ) -> tuple[InferReply, tuple[Attempt, ...]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        attempts: list[Attempt] = []
        for candidate in decision.order:
            remaining = deadline - loop.time()
            if remaining <= 0.001:
                break
            if not candidate.local:
                self.router.started(candidate.node)
                self.forwarded += 1
            t0 = time.perf_counter()
            try:
                reply = await run(candidate, remaining)
            except RequestError:
                if not candidate.local:
                    self.router.finished(candidate.node, ok=True, latency_ms=(time.perf_counter() - t0) * 1e3)
                raise  # the client's mistake gets the same answer anywhere: no retry
            except (WorkerUnavailable, ForwardError, CarmlError) as exc:
                if not candidate.local:
                    self.router.finished(candidate.node, ok=False)
                attempts.append(Attempt(candidate.node, False, str(exc)))
                self.retries += 1
                log.info("attempt on %s failed (%s); trying the next candidate", candidate.node, exc)
                continue
            if not candidate.local:
                self.router.finished(candidate.node, ok=True, latency_ms=(time.perf_counter() - t0) * 1e3)
            attempts.append(Attempt(candidate.node, True))
            return reply, tuple(attempts)
        reasons = "; ".join(f"{a.node}: {a.error}" for a in attempts) or "the deadline passed"
        raise WorkerUnavailable(f"every capable member failed within {budget:.1f} s ({reasons})")

    def statistics(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "retries": self.retries,
            "peers": {
                n: {
                    "in_flight": h.in_flight,
                    "latency_ms": h.latency_ms,
                    "failures": h.failures,
                    "successes": h.successes,
                    "avoided": h.avoid_until > time.monotonic(),
                }
                for n, h in self.router.peers.items()
            },
        }
