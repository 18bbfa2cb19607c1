"""A throwaway LAN of network namespaces on one bridge, for tests that need real multicast (imported as `netns`).

Everything stays on this machine: the bridge has no address and no uplink, so the 10.77.X.0/24 hosts inside the
namespaces can only reach each other. Needs root and iproute2; ``netns_unavailable()`` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

_IFNAMSIZ = 15  # longest Linux interface name
_CMD_TIMEOUT = 10.0  # seconds for one ip/iptables command


class NetnsError(RuntimeError):
    pass


def _cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    name: str  # h0, h1, ...
    ns: str  # the network namespace (ip netns name)
    ip: str  # its IPv4 address on the LAN (its interface inside the namespace is eth0)
    veth: str  # the other end of eth0, on the bridge
    bridge: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def run(self, args: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside this host's namespace; lan() kills it on exit if it is still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *args], **popen_kwargs)
        self.procs.append(proc)
        return proc


def _kill_all(hosts: list[Host]) -> None:
    """Our Popens first (ip netns exec execs, so the pid is the program), then anything else left in the namespace
    (a grandchild): a namespace with live processes outlives `ip netns del` under no name at all."""
    for host in hosts:
        for proc in host.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in host.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        listed = _cmd("ip", "netns", "pids", host.ns, check=False)
        for pid in listed.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _cleanup(bridge: str, hosts: list[Host], veths: list[str], iptables_rule: list[str] | None) -> list[str]:
    """Undo everything, each step independently; returns what failed (empty: all gone)."""
    errors: list[str] = []

    def attempt(*args: str, gone: str) -> None:
        done = _cmd(*args, check=False)
        if done.returncode != 0 and gone not in done.stderr:  # already gone is fine: removal is idempotent
            errors.append(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")

    try:
        _kill_all(hosts)
    except Exception as exc:  # keep going: the namespaces and the bridge still have to go
        errors.append(f"killing processes: {exc!r}")
    if iptables_rule is not None:
        attempt("iptables", "-D", *iptables_rule, gone="does a matching rule exist")
    # Veths first: deleting one end removes both at once, whereas a deleted namespace is torn down (with its
    # veth end) asynchronously by the kernel, so the host end would linger for a moment.
    for veth in veths:
        attempt("ip", "link", "del", veth, gone="Cannot find device")
    for host in hosts:
        attempt("ip", "netns", "del", host.ns, gone="No such file or directory")
    attempt("ip", "link", "del", bridge, gone="Cannot find device")
    return errors


@contextlib.contextmanager
def lan(n: int, *, prefix: str = "cm") -> Iterator[list[Host]]:
    """``n`` namespaces h0..h{n-1} at 10.77.X.1.. on a fresh bridge with multicast snooping off; removed on exit.

    Cleanup runs whatever happens in the body: processes started with Host.run (and any others in the namespaces)
    are killed, the iptables rule is deleted, the namespaces, veths and bridge are removed. If a cleanup step fails
    the others still run and NetnsError is raised afterwards (unless the body is already raising).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if n > 253:
        raise ValueError("one /24: at most 253 hosts")
    tag = secrets.token_hex(3)
    if len(f"{prefix}{tag}h{n - 1}") > _IFNAMSIZ or len(f"{prefix}br{tag}") > _IFNAMSIZ:
        raise ValueError(f"prefix {prefix!r} too long for {_IFNAMSIZ}-character interface names")
    subnet = secrets.randbelow(256)
    bridge = f"{prefix}br{tag}"
    hosts: list[Host] = []
    veths: list[str] = []
    iptables_rule: list[str] | None = None
    try:
        # addrgenmode none: no IPv6 link-local, so no stray ND/MLD chatter and an IPv4-only LAN by construction
        _cmd("ip", "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
        _cmd("ip", "link", "set", bridge, "addrgenmode", "none")
        _cmd("ip", "link", "set", bridge, "up")
        if shutil.which("iptables"):  # with br_netfilter, bridged frames traverse FORWARD (DROP under dockerd)
            rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
            _cmd("iptables", "-I", *rule)
            iptables_rule = rule
        for i in range(n):
            veth = f"{prefix}{tag}h{i}"
            host = Host(name=f"h{i}", ns=f"{prefix}{tag}n{i}", ip=f"10.77.{subnet}.{i + 1}", veth=veth, bridge=bridge)
            _cmd("ip", "netns", "add", host.ns)
            hosts.append(host)
            _cmd("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            veths.append(veth)
            _cmd("ip", "link", "set", veth, "addrgenmode", "none")
            _cmd("ip", "link", "set", veth, "master", bridge)
            _cmd("ip", "link", "set", veth, "up")
            _cmd("ip", "-n", host.ns, "link", "set", "lo", "up")
            _cmd("ip", "-n", host.ns, "link", "set", "eth0", "addrgenmode", "none")
            _cmd("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _cmd("ip", "-n", host.ns, "link", "set", "eth0", "up")
            _cmd("ip", "-n", host.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
    except BaseException:
        _cleanup(bridge, hosts, veths, iptables_rule)
        raise
    body_raised = False
    try:
        yield hosts
    except BaseException:
        body_raised = True
        raise
    finally:
        errors = _cleanup(bridge, hosts, veths, iptables_rule)
        if errors and not body_raised:
            raise NetnsError("lan cleanup: " + "; ".join(errors))


def namespace_exists(ns: str) -> bool:
    return ns in _cmd("ip", "netns", "list", check=False).stdout.split()


def link_exists(name: str) -> bool:
    return _cmd("ip", "link", "show", "dev", name, check=False).returncode == 0


@functools.cache
def netns_unavailable() -> str | None:
    """Why tests needing lan() must skip here, or None when a namespace with a veth can be built."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    try:
        with lan(1, prefix="cq"):
            pass
    except (NetnsError, OSError) as exc:
        return f"cannot build a network namespace: {exc}"
    return None


LOSS_CHAINS = {"INPUT": "-i", "OUTPUT": "-o"}  # the chain and how its rule names eth0


@contextlib.contextmanager
def packet_loss(hosts: Sequence[Host], probability: float, *, chains: Sequence[str] = ("INPUT",)) -> Iterator[None]:
    """Drop each packet through eth0 (UDP and TCP alike, loopback spared) with ``probability``, in ``chains`` of
    every host: iptables' statistic match, as this kernel has no tc netem. INPUT alone loses each LAN packet once
    with ``probability``; INPUT and OUTPUT lose it with 1 - (1 - p)^2. Rules removed on exit (or with the LAN)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    added: list[tuple[Host, list[str]]] = []
    try:
        for host in hosts:
            for chain in chains:
                rule = [chain, LOSS_CHAINS[chain], "eth0", "-m", "statistic", "--mode", "random"]
                rule += ["--probability", f"{probability:.6f}", "-j", "DROP"]
                if probability > 0:
                    _cmd("ip", "netns", "exec", host.ns, "iptables", "-I", *rule)
                    added.append((host, rule))
        yield
    finally:
        for host, rule in added:
            if namespace_exists(host.ns):
                _cmd("ip", "netns", "exec", host.ns, "iptables", "-D", *rule, check=False)
