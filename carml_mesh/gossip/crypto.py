"""AES-GCM sealing of gossip packets with a keyring, as memberlist's encrypted gossip. Pure: no I/O but from_file.

Wire layout of a packet (what goes into one UDP datagram or one TCP frame):

    0x00 | payload                                       no cluster key (plaintext)
    0x01 | nonce (12 random bytes) | ciphertext | tag(16)  AES-GCM with the keyring's primary key

The additional authenticated data is ``b"carml-gossip/1/" + cluster name``, so a packet of another cluster does not
open even where both clusters share a key. Every key of the keyring opens, only the primary seals: a key rotates
by adding the new key everywhere, then making it primary everywhere, then removing the old one.

Every failure is a :class:`CryptoError` whose message says why; nothing else escapes :func:`open_packet`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carml_mesh.errors import CryptoError

__all__ = [
    "AAD_PREFIX",
    "FLAG_PLAIN",
    "FLAG_SEALED",
    "KEY_SIZES",
    "NONCE_SIZE",
    "OVERHEAD",
    "PLAIN_OVERHEAD",
    "TAG_SIZE",
    "Keyring",
    "open_packet",
    "seal_packet",
]

FLAG_PLAIN: Final = 0x00
FLAG_SEALED: Final = 0x01
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
OVERHEAD: Final = 1 + NONCE_SIZE + TAG_SIZE  # flag byte + nonce + GCM tag: 29 bytes
PLAIN_OVERHEAD: Final = 1  # the flag byte of an unsealed packet
KEY_SIZES: Final = (16, 24, 32)  # AES-128, AES-192, AES-256
AAD_PREFIX: Final = b"carml-gossip/1/"

_HEX = re.compile(r"[0-9A-Fa-f]+")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_SEPARATORS = re.compile(r"[,\s]+")


def _check_key(key: object, index: int) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise CryptoError(f"key {index}: expected bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) not in KEY_SIZES:
        raise CryptoError(f"key {index}: {len(key)} bytes; an AES key is 16, 24 or 32 bytes (AES-128/192/256)")
    return key


class Keyring:
    """The cluster keys: the first is primary (seals), every one opens. Immutable; rotation builds a new one.

    Never shows key material: repr and errors name keys by index, size and a short sha256 fingerprint.
    """

    __slots__ = ("_aeads", "_keys")

    def __init__(self, keys: bytes | Iterable[bytes]) -> None:
        if isinstance(keys, bytes | bytearray | memoryview):
            keys = [bytes(keys)]
        try:
            items = list(keys)
        except TypeError:
            raise CryptoError(f"a keyring is built from keys (bytes), got {type(keys).__name__}") from None
        unique: list[bytes] = []
        for index, key in enumerate(items, 1):
            key = _check_key(key, index)
            if key not in unique:
                unique.append(key)
        if not unique:
            raise CryptoError("a keyring needs at least one key")
        self._keys: tuple[bytes, ...] = tuple(unique)
        self._aeads: tuple[AESGCM, ...] = tuple(AESGCM(k) for k in unique)

    # -- construction from text ------------------------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str) -> Keyring:
        """Keys separated by commas, whitespace or newlines, each base64 (standard or urlsafe, padding optional) or
        hex; the first is primary. Lines starting with ``#`` are comments."""
        if not isinstance(text, str):
            raise CryptoError(f"keyring text must be str, got {type(text).__name__}")
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        tokens = [t for t in _SEPARATORS.split(" ".join(lines)) if t]
        if not tokens:
            raise CryptoError("no key in the keyring text")
        return cls([_parse_key(token, index) for index, token in enumerate(tokens, 1)])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """:meth:`from_text` of a file's contents; a file that cannot be read is a CryptoError too."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CryptoError(f"cannot read keyring file {os.fspath(path)}: {reason}") from None
        try:
            return cls.from_text(text)
        except CryptoError as exc:
            raise CryptoError(f"keyring file {os.fspath(path)}: {exc}") from None

    # -- views ---------------------------------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key, primary first."""
        return self._keys

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Short, non-secret identifiers of the keys (first 8 hex digits of their sha256), primary first."""
        return tuple(hashlib.sha256(k).hexdigest()[:8] for k in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        keys = ", ".join(f"AES-{len(k) * 8}:{fp}" for k, fp in zip(self._keys, self.fingerprints, strict=True))
        return f"Keyring([{keys}])"

    # -- rotation ------------------------------------------------------------------------------------------------

    def with_key(self, key: bytes, *, primary: bool = False) -> Keyring:
        """This keyring plus ``key`` (step 1 of a rotation), or with ``key`` made primary (step 2)."""
        key = _check_key(key, len(self._keys) + 1)
        rest = [k for k in self._keys if k != key]
        return Keyring([key, *rest] if primary else [*self._keys, key])

    def without_key(self, key: bytes) -> Keyring:
        """This keyring less ``key`` (step 3 of a rotation); the primary key cannot be removed."""
        key = _check_key(key, 1)
        if key == self._keys[0]:
            raise CryptoError("cannot remove the primary key: make another key primary first")
        if key not in self._keys:
            raise CryptoError("the key to remove is not in the keyring")
        return Keyring([k for k in self._keys if k != key])


def _parse_key(token: str, index: int) -> bytes:
    """One key from its text; hex wins where a token reads as both (only 32 hex digits can also read as base64)."""
    candidates: list[tuple[str, bytes]] = []
    if len(token) % 2 == 0 and _HEX.fullmatch(token):
        candidates.append(("hex", bytes.fromhex(token)))
    if _B64.fullmatch(token):
        body = token.rstrip("=").replace("-", "+").replace("_", "/")
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(("base64", base64.b64decode(body + "=" * (-len(body) % 4), validate=True)))
    for _, raw in candidates:
        if len(raw) in KEY_SIZES:
            return raw
    if not candidates:
        raise CryptoError(f"key {index} is neither base64 nor hex")  # never echo the text: it may be a secret
    kind, raw = candidates[0]
    raise CryptoError(f"key {index}: {len(raw)} bytes (read as {kind}); an AES key is 16, 24 or 32 bytes")


def _aad(cluster: str) -> bytes:
    if not isinstance(cluster, str):
        raise CryptoError(f"cluster name must be str, got {type(cluster).__name__}")
    try:
        return AAD_PREFIX + cluster.encode("utf-8")
    except UnicodeEncodeError:
        raise CryptoError("cluster name is not encodable as UTF-8") from None


def seal_packet(payload: bytes, keyring: Keyring | None, cluster: str) -> bytes:
    """The wire bytes of ``payload``: ``0x00 + payload`` without a keyring, else sealed with its primary key."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CryptoError(f"payload must be bytes, got {type(payload).__name__}")
    if keyring is None:
        return b"\x00" + bytes(payload)
    aad = _aad(cluster)
    nonce = os.urandom(NONCE_SIZE)
    return b"\x01" + nonce + keyring._aeads[0].encrypt(nonce, bytes(payload), aad)


def open_packet(wire: bytes, keyring: Keyring | None, cluster: str) -> bytes:
    """The payload of wire bytes made by :func:`seal_packet`; CryptoError (only) when it cannot or must not open."""
    if not isinstance(wire, bytes | bytearray | memoryview):
        raise CryptoError(f"packet must be bytes, got {type(wire).__name__}")
    wire = bytes(wire)
    if not wire:
        raise CryptoError("empty packet")
    flag = wire[0]
    if flag == FLAG_PLAIN:
        if keyring is not None:
            raise CryptoError("unencrypted packet refused: this node has a cluster key")
        return wire[1:]
    if flag != FLAG_SEALED:
        raise CryptoError(f"unknown packet flag byte 0x{flag:02x} (expected 0x00 plain or 0x01 AES-GCM)")
    if keyring is None:
        raise CryptoError("encrypted packet: this node has no cluster key")
    if len(wire) < OVERHEAD:
        raise CryptoError(f"truncated encrypted packet: {len(wire)} bytes, at least {OVERHEAD} needed")
    aad = _aad(cluster)
    nonce = wire[1 : 1 + NONCE_SIZE]
    sealed = wire[1 + NONCE_SIZE :]
    for aead in keyring._aeads:
        try:
            return aead.decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError, TypeError, OverflowError):
            continue
    raise CryptoError("no key of the keyring opens this packet (wrong cluster key or cluster name?)")
