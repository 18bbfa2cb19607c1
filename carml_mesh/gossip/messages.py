"""The gossip wire vocabulary: frozen dataclasses, no I/O. Names follow memberlist's messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]  # (host, gossip port)


class State(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True)
class Ping:
    seq: int
    target: str  # the receiver checks it is meant for it (a restarted node may hold the address now)
    source: str
    source_addr: Address


@dataclass(frozen=True)
class IndirectPing:
    """Ask the receiver to ping ``target`` on our behalf and relay the ack (and a nack if it times out)."""

    seq: int
    target: str
    target_addr: Address
    source: str
    source_addr: Address
    nack: bool = True


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class Nack:
    seq: int


@dataclass(frozen=True)
class Alive:
    incarnation: int
    node: str
    addr: Address
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Suspect:
    incarnation: int
    node: str
    source: str  # who suspects: distinct sources are the independent confirmations Lifeguard counts


@dataclass(frozen=True)
class Dead:
    incarnation: int
    node: str
    source: str  # source == node means a graceful leave


@dataclass(frozen=True)
class MemberState:
    """One member as carried by push-pull anti-entropy."""

    name: str
    addr: Address
    incarnation: int
    state: State
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class PushPull:
    join: bool
    states: tuple[MemberState, ...]


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | PushPull
