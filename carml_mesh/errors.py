"""The one error root of carml-mesh and its short tree.

    CarmlError
    ├── ConfigError              a flag, env var or config value is wrong
    ├── ManifestError            a manifest is invalid (file, field, reason)
    ├── ArtifactError            an artifact is missing or its digest does not match
    ├── GossipError              membership protocol
    │   ├── CodecError           bytes that are not a valid gossip packet or message
    │   └── CryptoError          a packet that no key of the keyring opens, or the wrong kind (plain/sealed)
    ├── RequestError             the client's fault; carries the HTTP status
    │   ├── BadRequest           400: malformed body, wrong shape or dtype, undecodable image
    │   ├── NotFound             404: unknown model, version, framework or device
    │   ├── PayloadTooLarge      413: body, image or pixel count over the limits
    │   └── UnsupportedMediaType 415
    └── ServiceError             ours; carries the HTTP status
        ├── WorkerUnavailable    503: the worker crashed, is restarting or cannot start
        └── InferenceFailed      500: the framework raised on input it had accepted

Third-party errors (aiohttp, onnxruntime, torch, msgpack) are translated where they enter, so callers only ever
catch these.
"""

from __future__ import annotations


class CarmlError(Exception):
    """Root of every error carml-mesh raises on purpose."""

    status: int = 500


class ConfigError(CarmlError):
    """A configuration value is wrong."""


class ManifestError(CarmlError):
    """A manifest is invalid; names the file, the field and the reason."""

    def __init__(self, reason: str, *, field: str = "", file: str = "") -> None:
        self.reason = reason
        self.field = field
        self.file = file
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class ArtifactError(CarmlError):
    """An artifact is missing, unreadable or does not match its sha256."""


class GossipError(CarmlError):
    """Something in the membership protocol."""


class CodecError(GossipError):
    """Bytes that do not decode to a valid gossip packet or message; dropped and counted, never fatal."""


class CryptoError(GossipError):
    """A packet that cannot be opened with the cluster keyring; dropped and counted, never fatal."""


class RequestError(CarmlError):
    """The request is wrong; the message says what to fix."""

    status = 400


class BadRequest(RequestError):
    status = 400


class NotFound(RequestError):
    status = 404


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class ServiceError(CarmlError):
    """Something on our side failed; the request itself may be fine."""

    status = 500


class WorkerUnavailable(ServiceError):
    status = 503


class InferenceFailed(ServiceError):
    status = 500
