"""Gossip configuration. Defaults are memberlist's LAN profile (DefaultLANConfig)."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Address

DEFAULT_GOSSIP_PORT = 7946
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class GossipConfig:
    name: str
    addr: Address  # the address peers reach us at (advertised); we bind to it unless bind_host says otherwise
    cluster: str = DEFAULT_CLUSTER
    bind_host: str | None = None
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    tcp_fallback: bool = True  # memberlist's DisableTcpPings = false
    # A TCP fallback still in flight when the probe interval ends may answer this much later before we suspect: a
    # lost SYN or SYN-ACK is sent again only after 1 s (Linux's initial RTO), so on a lossy link memberlist's half
    # interval is too short for a fallback that would succeed. A crashed process answers with a reset at once.
    tcp_ping_grace: float = 1.0
    # While we hold a member as suspect we tell it so directly, this often, until it refutes or dies: gossip alone
    # may miss it (4 transmits per node at N = 8), and an unrefuted suspicion is a false death.
    suspect_reminder_interval: float = 0.5
    # Serf's reconnect: push-pull with a random failed member now and then, so a healed partition merges again
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0  # how long a failed member stays a reconnect candidate
    tcp_timeout: float = 10.0
    max_packet: int = 1400
    leave_propagate_delay: float = 1.0  # how long a graceful leave keeps gossiping its own departure
