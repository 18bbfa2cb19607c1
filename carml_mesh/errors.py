"""The one error root of carml-mesh and its short tree.

    CarmlError
    ├── ConfigError              a flag, env var or config value is wrong
    ├── ManifestError            a manifest is invalid (file, field, reason)
    ├── ArtifactError            an artifact is missing or its digest does not match
    │   ├── ArtifactMismatch     its bytes do not hash to the sha256 the manifest gives
    │   └── ArtifactTooLarge     it exceeds the size limit on its way into the store
    ├── GossipError              membership protocol
    │   ├── CodecError           bytes that are not a valid gossip packet or message
    │   └── CryptoError          a packet that no key of the keyring opens, or the wrong kind (plain/sealed)
    ├── RequestError             the client's fault; carries the HTTP status
    │   ├── BadRequest           400: malformed body, wrong shape or dtype, undecodable image
    │   ├── Unauthorized         401: the API token is missing or wrong (answered with WWW-Authenticate: Bearer)
    │   ├── NotFound             404: unknown model, version, framework or device
    │   ├── Conflict             409: a published name and version exists already, or cannot be withdrawn here
    │   ├── PayloadTooLarge      413: body, image or pixel count over the limits
    │   └── UnsupportedMediaType 415
    └── ServiceError             ours; carries the HTTP status
        ├── BadGateway           502: a peer failed to supply what was asked of it (an artifact, a pull)
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


class ArtifactMismatch(ArtifactError):
    """An artifact's bytes hash to another sha256 than the one expected."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ArtifactTooLarge(ArtifactError):
    """An artifact exceeds the size limit while it is streamed into the store."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


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


class Unauthorized(RequestError):
    """The API token is missing or wrong; the answer carries ``WWW-Authenticate: Bearer``."""

    status = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        challenge = 'Bearer realm="carml-mesh"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    status = 409


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class ServiceError(CarmlError):
    """Something on our side failed; the request itself may be fine."""

    status = 500


class BadGateway(ServiceError):
    status = 502


class WorkerUnavailable(ServiceError):
    status = 503


class InferenceFailed(ServiceError):
    status = 500
