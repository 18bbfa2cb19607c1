"""Mesh membership with no central registry: SWIM with the Lifeguard refinements, as HashiCorp memberlist does it.

messages.py   the wire vocabulary (frozen dataclasses), no I/O
codec.py      messages <-> msgpack bytes; compound packets; never raises on garbage but CodecError
crypto.py     AES-GCM sealing with a keyring (version byte + nonce + ciphertext + tag)
state.py      the membership state machine: pure, injected clock and RNG, returns effects
transport.py  asyncio UDP and TCP (push-pull, fallback ping) at the edge
mdns.py       discovery with python-zeroconf
simulator.py  N state machines over a virtual lossy network, for tests and benchmarks
runtime.py    open_gossip(): one state machine + transport + timers as an async context manager
"""
