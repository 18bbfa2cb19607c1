"""Tensors as they cross carml-mesh's wires: ``{"dtype": "float32", "shape": [..], "data": <raw little-endian>}``.

The /api/predict msgpack bodies, node-to-node hops and the node <-> worker frames share this one form. Its one
implementation lives in the worker's protocol module, because the worker image ships that package alone and may
not import the node; everything outside ``exec/`` imports it from here.
"""

from __future__ import annotations

from ..exec.worker.protocol import DTYPES, VIEW_MIN, unpackb_views
from ..exec.worker.protocol import ProtocolError as TensorError
from ..exec.worker.protocol import decode_tensor as decode
from ..exec.worker.protocol import encode_tensor as encode

__all__ = ["DTYPES", "VIEW_MIN", "TensorError", "decode", "encode", "unpackb_views"]
