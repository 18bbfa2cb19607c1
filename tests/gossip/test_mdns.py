"""mDNS discovery: TXT parsing as a pure function, and real multicast between three network namespaces."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import netns
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carml_mesh.gossip.mdns import MDNS_PROTOCOL, SERVICE_TYPE, Discovered, MdnsDiscovery, parse_txt

REPO = Path(__file__).resolve().parents[2]

GOOD = {b"id": b"n1", b"cluster": b"lab", b"gossip": b"7946", b"http": b"7450", b"proto": b"1"}


# -- parse_txt ------------------------------------------------------------------------------------------------


def test_parse_txt_good() -> None:
    assert parse_txt(GOOD, ["10.0.0.2"]) == Discovered("n1", "lab", ("10.0.0.2",), 7946, 7450, "1")
    assert parse_txt({**GOOD, b"extra": None, b"more": b"\xff"}) == Discovered("n1", "lab", (), 7946, 7450, "1")
    assert parse_txt({**GOOD, b"proto": b"2"}) == Discovered("n1", "lab", (), 7946, 7450, "2")  # filtered later
    assert parse_txt({**GOOD, b"cluster": "läb".encode()}) is not None


@pytest.mark.parametrize(
    "change",
    [
        {b"id": None},
        {b"id": b""},
        {b"cluster": b"\xff\xfe"},
        {b"cluster": b"lab\n"},
        {b"cluster": b" lab"},
        {b"gossip": b"0"},
        {b"gossip": b"65536"},
        {b"gossip": b"-1"},
        {b"gossip": b" 7946"},
        {b"gossip": b"7_946"},
        {b"gossip": "٧٩٤٦".encode()},  # Arabic-Indic digits: int() takes them, a port must not
        {b"http": b"http"},
        {b"http": b"1e3"},
        {b"proto": None},
        {b"id": b"x" * 1000},
    ],
)
def test_parse_txt_rejects(change: dict[bytes, bytes | None]) -> None:
    assert parse_txt({**GOOD, **change}) is None


@pytest.mark.parametrize("missing", list(GOOD))
def test_parse_txt_missing_field(missing: bytes) -> None:
    assert parse_txt({k: v for k, v in GOOD.items() if k != missing}) is None


@given(st.dictionaries(st.binary(max_size=12), st.none() | st.binary(max_size=40)))
def test_parse_txt_garbage_never_raises(properties: dict[bytes, bytes | None]) -> None:
    result = parse_txt(properties)
    assert result is None or isinstance(result, Discovered)


@given(
    st.dictionaries(
        st.sampled_from(list(GOOD)), st.none() | st.binary(max_size=8) | st.sampled_from(list(GOOD.values()))
    )
)
def test_parse_txt_near_misses_never_raise(properties: dict[bytes, bytes | None]) -> None:
    result = parse_txt(properties)
    if result is not None:
        assert 0 < result.gossip_port < 65536 and 0 < result.http_port < 65536 and result.node_id


def test_constructor_validates() -> None:
    def ignore(_: Discovered) -> None:
        pass

    for bad_id in ("", "a.b", "x" * 58, "tab\t"):
        with pytest.raises(ValueError):
            MdnsDiscovery(bad_id, "lab", 7946, 7450, ignore)
    with pytest.raises(ValueError):
        MdnsDiscovery("n0", "", 7946, 7450, ignore)
    with pytest.raises(ValueError):
        MdnsDiscovery("n0", "lab", 0, 7450, ignore)
    with pytest.raises(ValueError):
        MdnsDiscovery("n0", "lab", 7946, 7450, ignore, addresses=["not-an-ip"])
    assert SERVICE_TYPE == "_carml._tcp.local." and MDNS_PROTOCOL == "1"


async def test_aclose_without_enter_is_harmless() -> None:
    discovery = MdnsDiscovery("n0", "lab", 7946, 7450, lambda _: None, addresses=["127.0.0.1"])
    await discovery.aclose()
    await discovery.aclose()
    assert set(discovery.statistics().values()) == {0}


# -- three namespaces -------------------------------------------------------------------------------------------

# One node: announce, report each discovery as a JSON line, say "done" once it has found `expect`, ignored
# `ignore_clusters` nodes of other clusters and counted `malformed` bad announcements (or at the deadline), then
# wait for a line on stdin (or EOF) and close. `watch`: also report services leaving, seen by a plain browser.
# `junk`: also announce a service of our type whose TXT is garbage.
PEER = r"""
import asyncio, dataclasses, json, sys, time
from zeroconf import InterfaceChoice, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from carml_mesh.gossip.mdns import SERVICE_TYPE, MdnsDiscovery

def emit(**fields):
    print(json.dumps(fields), flush=True)

async def main(cfg):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg["deadline"]
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    found = set()
    def on_found(d):
        found.add(d.node_id)
        emit(event="found", node=cfg["id"], peer=dataclasses.asdict(d))
    def on_change(zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Removed:
            emit(event="removed", node=cfg["id"], name=name)
    aux = browser = junk = None
    if cfg["watch"] or cfg["junk"]:
        aux = AsyncZeroconf(interfaces=[cfg["ip"]])
    if cfg["watch"]:
        browser = AsyncServiceBrowser(aux.zeroconf, SERVICE_TYPE, handlers=[on_change])
    if cfg["junk"]:
        info = AsyncServiceInfo(SERVICE_TYPE, f"junk.{SERVICE_TYPE}", port=9, server="junk.local.",
                                properties={"id": "", "cluster": "lab", "gossip": "many", "http": "7450"},
                                parsed_addresses=[cfg["ip"]])
        junk = asyncio.ensure_future(aux.async_register_service(info))
    extra = {"interfaces": InterfaceChoice.All} if cfg["all_interfaces"] else {}
    started = time.monotonic()
    disc = MdnsDiscovery(cfg["id"], cfg["cluster"], cfg["gossip"], cfg["http"], on_found, addresses=[cfg["ip"]],
                         **extra)
    async with disc:
        if junk is not None:
            await junk
        emit(event="ready", node=cfg["id"], after_s=round(time.monotonic() - started, 3))
        while loop.time() < deadline:
            stats = disc.statistics()
            if (set(cfg["expect"]) <= found and stats["ignored_cluster"] >= cfg["ignore_clusters"]
                    and stats["malformed"] >= cfg["malformed"]):
                break
            await asyncio.sleep(0.05)  # polling our own counters, not waiting for the network to be "ready"
        emit(event="done", node=cfg["id"], after_s=round(time.monotonic() - started, 3), stats=disc.statistics())
        try:
            await asyncio.wait_for(stdin.readline(), max(0.0, deadline - loop.time()) + 10)
        except TimeoutError:
            pass
        closing = time.monotonic()
    close_s = time.monotonic() - closing
    again = time.monotonic()
    await disc.aclose()
    again_s = time.monotonic() - again
    if aux is not None:
        if browser is not None:
            await browser.async_cancel()
        await aux.async_close()
    emit(event="closed", node=cfg["id"], close_s=round(close_s, 3), again_s=round(again_s, 3),
         stats=disc.statistics(), tasks=len(asyncio.all_tasks()) - 1)

asyncio.run(main(json.loads(sys.argv[1])))
"""

DISCOVERY_DEADLINE = 15.0


class Peers:
    """The PEER programs, their JSON lines merged into one queue by reader threads."""

    def __init__(self) -> None:
        self.lines: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.stderr: dict[str, list[str]] = {}
        self.seen: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill what still runs, drain the readers, close the pipes (lan() would kill them, not close them)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        for thread in self.threads:
            thread.join(timeout=10)
        for proc in self.procs.values():
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def start(self, host: netns.Host, key: str, **extra: Any) -> None:
        cfg = {"deadline": DISCOVERY_DEADLINE, "gossip": 7946, "http": 7450, "all_interfaces": False}
        cfg |= {"watch": False, "junk": False, "malformed": 0}
        cfg.update(extra)
        proc = host.run(
            [sys.executable, "-c", PEER, json.dumps({"ip": host.ip, **cfg})],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs[key] = proc
        self.stderr[key] = []
        for reader in (self._read_stdout, self._read_stderr):
            thread = threading.Thread(target=reader, args=(key, proc), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _read_stdout(self, key: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.lines.put((key, json.loads(line)))
            except json.JSONDecodeError:
                self.stderr[key].append("stdout: " + line)
        self.lines.put((key, {"event": "exit"}))

    def _read_stderr(self, key: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.stderr[key].extend(proc.stderr)

    def _pull(self, end: float, waiting_for: object) -> None:
        """Move one more line from the readers into ``seen``, or fail at ``end``."""
        try:
            key, line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"timed out waiting for {waiting_for}; seen {self.seen}; stderr {self.stderr}"
            ) from None
        self.seen.append({**line, "key": key})

    def _first(self, key: str, event: str) -> dict[str, Any] | None:
        return next((line for line in self.seen if line["key"] == key and line["event"] == event), None)

    def wait_for(self, want: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
        """Until each key in `want` has printed (now or earlier) an event of the given kind; returns those lines."""
        end = time.monotonic() + timeout
        while True:
            got = {key: line for key, event in want.items() if (line := self._first(key, event)) is not None}
            if len(got) == len(want):
                return got
            for key in want.keys() - got.keys():
                if self._first(key, "exit") is not None:
                    raise AssertionError(f"{key} exited early; seen {self.seen}; stderr {self.stderr[key]}")
            self._pull(end, want)

    def wait_found(self, key: str, match: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Until `key` has reported a peer with the fields in `match`; returns it."""
        end = time.monotonic() + timeout
        while True:
            for peer in found_by(self.seen, key):
                if match.items() <= peer.items():
                    return peer
            if self._first(key, "exit") is not None:
                raise AssertionError(f"{key} exited early; seen {self.seen}; stderr {self.stderr[key]}")
            self._pull(end, (key, match))

    def quit(self, key: str) -> None:
        stdin = self.procs[key].stdin
        assert stdin is not None
        stdin.write("quit\n")
        stdin.flush()


def found_by(seen: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [line["peer"] for line in seen if line["key"] == key and line["event"] == "found"]


def test_three_namespaces() -> None:
    if reason := netns.netns_unavailable():
        pytest.skip(reason)
    with netns.lan(3) as hosts, Peers() as peers:
        ips = [h.ip for h in hosts]
        lab = {"cluster": "lab", "ignore_clusters": 1, "malformed": 1}
        peers.start(hosts[0], "n0", id="n0", expect=["n1"], watch=True, **lab)
        peers.start(hosts[1], "n1", id="n1", expect=["n0"], **lab)
        # n2 listens on every interface of its namespace (lo too), the default when a node has several, and also
        # announces a service with garbage TXT
        peers.start(
            hosts[2], "n2", id="n2", cluster="other", expect=[], ignore_clusters=2, all_interfaces=True, junk=True
        )
        done = peers.wait_for({"n0": "done", "n1": "done", "n2": "done"}, timeout=DISCOVERY_DEADLINE + 10)

        # n1 crashes (no goodbye) and comes back on other ports: n0 hears the update and reports n1 again
        peers.procs["n1"].kill()
        peers.wait_for({"n1": "exit"}, timeout=10)
        peers.start(hosts[1], "n1b", id="n1", expect=["n0"], gossip=7947, http=7451, **lab)
        moved = peers.wait_found("n0", {"node_id": "n1", "gossip_port": 7947}, timeout=DISCOVERY_DEADLINE)
        peers.wait_for({"n1b": "done"}, timeout=DISCOVERY_DEADLINE + 10)

        assert not [line for line in peers.seen if line["event"] == "removed"], peers.seen
        # n1 leaves properly: its goodbyes reach n0 (and the close is quick)
        peers.quit("n1b")
        closed = peers.wait_for({"n1b": "closed", "n0": "removed"}, timeout=10)
        assert closed["n0"]["name"] == f"n1.{SERVICE_TYPE}"
        # n2's network goes away under it: closing must still be quick and quiet
        subprocess.run(["ip", "-n", hosts[2].ns, "link", "del", "eth0"], check=True, timeout=10)
        for key in ("n0", "n2"):
            peers.quit(key)
        closed.update(peers.wait_for({"n0": "closed", "n2": "closed"}, timeout=15))
        for proc in peers.procs.values():
            proc.wait(timeout=10)

    assert not any("Traceback" in "".join(lines) for lines in peers.stderr.values()), peers.stderr
    # discovery itself: the first report of each peer is exact
    for key, other, ip in (("n0", "n1", ips[1]), ("n1", "n0", ips[0]), ("n1b", "n0", ips[0])):
        first = found_by(peers.seen, key)[0]
        assert first == {
            "node_id": other,
            "cluster": "lab",
            "addresses": [ip],
            "gossip_port": 7946,
            "http_port": 7450,
            "protocol": "1",
        }, first
    assert moved == {**moved, "addresses": [ips[1]], "gossip_port": 7947, "http_port": 7451, "cluster": "lab"}
    # nobody finds itself, n2 (another cluster) is found by nobody and finds nobody
    for key in ("n0", "n1", "n1b"):
        assert {p["node_id"] for p in found_by(peers.seen, key)} == {"n1" if key == "n0" else "n0"}
    assert found_by(peers.seen, "n2") == []
    # what was ignored, and why
    assert done["n0"]["stats"]["ignored_cluster"] >= 1 and done["n1"]["stats"]["ignored_cluster"] >= 1
    assert done["n2"]["stats"]["ignored_cluster"] >= 2 and done["n2"]["stats"]["found"] == 0
    for line in closed.values():
        stats = line["stats"]
        assert stats["ignored_protocol"] == 0 and stats["resolve_failures"] == 0, stats
        assert stats["malformed"] >= (0 if line["node"] == "n2" else 1), stats  # the junk service
        # aclose is bounded (CLOSE_TIMEOUT, 3 s; a node must stop within 5 s) and a second one returns at once
        assert line["close_s"] < 5.0 and line["again_s"] < 1.0, line
        assert line["tasks"] == 0, line  # no task of ours (or zeroconf's) outlives the block
    assert closed["n0"]["stats"]["found"] == 2  # n1, then n1 again on its new ports
    # and nothing is left behind
    for proc in peers.procs.values():
        assert proc.returncode is not None
    for host in hosts:
        assert not netns.namespace_exists(host.ns)
        assert not netns.link_exists(host.veth)
    assert not netns.link_exists(hosts[0].bridge)
