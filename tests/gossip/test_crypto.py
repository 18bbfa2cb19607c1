"""Tests of gossip packet sealing: round trips, key rotation, every refusal, keyring parsing, garbage."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carml_mesh.errors import CryptoError
from carml_mesh.gossip.crypto import OVERHEAD, Keyring, open_packet, seal_packet

K16 = bytes(range(16))
K24 = bytes(range(100, 124))
K32 = bytes(range(200, 232))
PAYLOAD = b"\x94\x01\xa7default\xa6node-a\x90"


def refused(wire: bytes, keyring: Keyring | None, fragment: str, cluster: str = "default") -> None:
    with pytest.raises(CryptoError) as info:
        open_packet(wire, keyring, cluster)
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("key", [K16, K24, K32], ids=["aes128", "aes192", "aes256"])
@pytest.mark.parametrize("payload", [b"", b"x", PAYLOAD, bytes(1371)])
def test_seal_open_round_trip(key: bytes, payload: bytes) -> None:
    ring = Keyring([key])
    wire = seal_packet(payload, ring, "default")
    assert len(wire) == len(payload) + OVERHEAD
    assert wire[0] == 1
    assert len(payload) < 16 or payload not in wire  # (a short one can occur by chance)
    assert open_packet(wire, ring, "default") == payload


def test_nonces_are_fresh() -> None:
    ring = Keyring([K32])
    assert seal_packet(PAYLOAD, ring, "c") != seal_packet(PAYLOAD, ring, "c")


def test_plain_round_trip() -> None:
    wire = seal_packet(PAYLOAD, None, "default")
    assert wire == b"\x00" + PAYLOAD
    assert open_packet(wire, None, "default") == PAYLOAD
    assert open_packet(b"\x00", None, "default") == b""
    assert open_packet(bytearray(wire), None, "default") == PAYLOAD
    assert open_packet(memoryview(wire), None, "default") == PAYLOAD


def test_rotation() -> None:
    old = Keyring([K16])
    added = old.with_key(K32)  # step 1: everyone opens with the new key, still seals with the old
    assert added.keys == (K16, K32)
    switched = added.with_key(K32, primary=True)  # step 2: seal with the new key
    assert switched.keys == (K32, K16)
    assert switched.primary == K32
    done = switched.without_key(K16)  # step 3: drop the old one
    assert done.keys == (K32,)

    sealed_old = seal_packet(PAYLOAD, old, "c")
    sealed_new = seal_packet(PAYLOAD, switched, "c")
    assert open_packet(sealed_old, added, "c") == PAYLOAD
    assert open_packet(sealed_old, switched, "c") == PAYLOAD  # the old primary is secondary here
    assert open_packet(sealed_new, added, "c") == PAYLOAD
    refused(sealed_new, old, "no key of the keyring opens this packet", "c")
    refused(sealed_old, done, "no key of the keyring opens this packet", "c")
    with pytest.raises(CryptoError, match="cannot remove the primary key"):
        done.without_key(K32)
    with pytest.raises(CryptoError, match="not in the keyring"):
        done.without_key(K24)


def test_keyring_basics() -> None:
    ring = Keyring([K16, K24, K16, K32])
    assert ring.keys == (K16, K24, K32)  # duplicates dropped, order kept
    assert len(ring) == 3
    assert Keyring(K32).keys == (K32,)
    text = repr(ring)
    assert "AES-128" in text and "AES-256" in text
    assert K16.hex() not in text and base64.b64encode(K16).decode() not in text
    assert len(ring.fingerprints) == 3 and all(len(f) == 8 for f in ring.fingerprints)


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ([], "at least one key"),
        ([b"short"], "key 1: 5 bytes; an AES key is 16, 24 or 32 bytes"),
        ([K16, bytes(33)], "key 2: 33 bytes"),
        ([K16, bytes(0)], "key 2: 0 bytes"),
        (["a" * 16], "key 1: expected bytes, got str"),
        (None, "built from keys"),
        (5, "built from keys"),
    ],
)
def test_keyring_refusals(keys: object, fragment: str) -> None:
    with pytest.raises(CryptoError) as info:
        Keyring(keys)  # type: ignore[arg-type]
    assert fragment in str(info.value), str(info.value)


def test_wrong_key_is_refused() -> None:
    wire = seal_packet(PAYLOAD, Keyring([K16]), "default")
    refused(wire, Keyring([bytes(16)]), "no key of the keyring opens this packet (wrong cluster key or cluster name?)")
    refused(wire, Keyring([K32, K24]), "no key of the keyring opens")


def test_other_cluster_is_refused_with_the_same_key() -> None:
    ring = Keyring([K32])
    wire = seal_packet(PAYLOAD, ring, "prod")
    assert open_packet(wire, ring, "prod") == PAYLOAD
    refused(wire, ring, "wrong cluster key or cluster name?", "staging")
    refused(wire, ring, "no key of the keyring opens", "")


def test_plain_and_sealed_refusals() -> None:
    ring = Keyring([K16])
    refused(seal_packet(PAYLOAD, None, "c"), ring, "unencrypted packet refused: this node has a cluster key")
    refused(seal_packet(PAYLOAD, ring, "c"), None, "encrypted packet: this node has no cluster key")
    refused(b"", ring, "empty packet")
    refused(b"", None, "empty packet")
    refused(b"\x01" + bytes(27), ring, "truncated encrypted packet: 28 bytes, at least 29 needed")
    refused(b"\x01", ring, "truncated")
    refused(b"\x02" + bytes(40), ring, "unknown packet flag byte 0x02")
    refused(b"\xff" + bytes(40), None, "unknown packet flag byte 0xff")
    refused("text", ring, "packet must be bytes")  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="payload must be bytes"):
        seal_packet("text", ring, "c")  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="cluster name must be str"):
        seal_packet(b"x", ring, None)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="UTF-8"):
        seal_packet(b"x", ring, "\ud800")


def test_tampering_any_byte_is_refused() -> None:
    ring = Keyring([K24])
    wire = seal_packet(PAYLOAD, ring, "default")
    for i in range(len(wire)):
        for bit in (0x01, 0x80):
            bad = bytearray(wire)
            bad[i] ^= bit
            with pytest.raises(CryptoError):
                open_packet(bytes(bad), ring, "default")
    for cut in range(len(wire)):
        with pytest.raises(CryptoError):
            open_packet(wire[:cut], ring, "default")
    with pytest.raises(CryptoError):
        open_packet(wire + b"\x00", ring, "default")


# -- keys from text ----------------------------------------------------------------------------------------------


def test_keys_from_text() -> None:
    std = base64.b64encode(K32).decode()
    url = base64.urlsafe_b64encode(bytes([251] * 32)).decode()
    assert "-" in url or "_" in url
    ring = Keyring.from_text(f"{std}, {url.rstrip('=')}\n{K16.hex()}\n\n# a comment\n{K24.hex().upper()}  # trailing\n")
    assert ring.keys == (K32, bytes([251] * 32), K16, K24)
    assert Keyring.from_text(base64.b64encode(K16).decode()).keys == (K16,)
    assert Keyring.from_text(base64.b64encode(K24).decode()).keys == (K24,)
    assert Keyring.from_text(base64.b64encode(K24).decode() + "\r\n").keys == (K24,)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no key"),
        ("  \n, ,\n# only a comment\n", "no key"),
        (base64.b64encode(bytes(20)).decode(), "key 1: 20 bytes (read as base64)"),
        (bytes(20).hex(), "key 1: 20 bytes (read as hex)"),
        (f"{K16.hex()},{bytes(8).hex()}", "key 2: 8 bytes"),
        ("not*a*key", "key 1 is neither base64 nor hex"),
        (f"{K16.hex()} ???", "key 2 is neither base64 nor hex"),
        ("abc=d", "neither base64 nor hex"),
    ],
)
def test_bad_key_text(text: str, fragment: str) -> None:
    with pytest.raises(CryptoError) as info:
        Keyring.from_text(text)
    assert fragment in str(info.value), str(info.value)
    assert "not*a*key" not in str(info.value)  # key text is never echoed


def test_from_text_refuses_non_str() -> None:
    with pytest.raises(CryptoError, match="must be str"):
        Keyring.from_text(K16)  # type: ignore[arg-type]


def test_keys_from_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    path.write_text(f"# cluster keys, primary first\n{base64.b64encode(K32).decode()}\n{K16.hex()}\n")
    assert Keyring.from_file(path).keys == (K32, K16)
    assert Keyring.from_file(str(path)).keys == (K32, K16)
    with pytest.raises(CryptoError, match="cannot read keyring file"):
        Keyring.from_file(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("zz!\n")
    with pytest.raises(CryptoError, match=r"keyring file .*bad: key 1 is neither base64 nor hex"):
        Keyring.from_file(bad)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CryptoError, match="cannot read keyring file"):
        Keyring.from_file(binary)


# -- hypothesis --------------------------------------------------------------------------------------------------

RINGS = [None, Keyring([K16]), Keyring([K32, K24])]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(RINGS), st.sampled_from(["default", "", "x"]))
def test_arbitrary_bytes_raise_only_crypto_error(wire: bytes, ring: Keyring | None, cluster: str) -> None:
    try:
        out = open_packet(wire, ring, cluster)
    except CryptoError:
        return
    assert ring is None and wire[:1] == b"\x00" and out == wire[1:]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([K16, K24, K32]), st.text(max_size=10))
def test_any_payload_round_trips(payload: bytes, key: bytes, cluster: str) -> None:
    ring = Keyring([key])
    assert open_packet(seal_packet(payload, ring, cluster), ring, cluster) == payload
