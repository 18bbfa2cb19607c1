"""InferRequest and InferReply through their /api/predict documents: what a forwarded request and its answer
carry survives the hop, and a peer's malformed answer is refused with a reason."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from carml_mesh.dataplane.document import MalformedReply, reply_document, reply_from_document, request_document
from carml_mesh.dataplane.types import (
    Attempt,
    InferReply,
    InferRequest,
    ItemTimings,
    Prediction,
    Route,
    RouteCandidate,
    ServingNode,
    Timings,
)
from carml_mesh.headers import FORWARDED, TIMEOUT_MS, Hop, hop_from
from carml_mesh.web import bodies


def hop(doc: dict[str, Any]) -> InferRequest:
    """A document as the peer reads it: msgpack on the wire, then the public parser."""
    return bodies.parse_msgpack_body(msgpack.packb(doc, use_bin_type=True))


def test_a_tensor_request_survives_the_hop_and_large_tensors_are_not_copied() -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    request = InferRequest(
        model="m", version="2", framework="pytorch", tensors={"input": x}, top_k=3, outputs=("logits",)
    )
    doc = request_document(request)
    wire = doc["inputs"][1]["tensors"]["input"]["data"]
    assert isinstance(wire, memoryview) and np.shares_memory(np.frombuffer(wire, np.float32), x)
    back = hop(doc)
    assert (back.model, back.version, back.framework, back.top_k, back.outputs) == ("m", "2", "pytorch", 3, ("logits",))
    assert back.tensors is not None
    np.testing.assert_array_equal(back.tensors["input"], x)


def test_unnamed_tensors_images_and_flags_survive_the_hop() -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 1, 8, 8)
    back = hop(request_document(InferRequest(model="m", tensors={"": x}, outputs=True, exact_dtypes=True)))
    assert back.tensors is not None and list(back.tensors) == [""] and back.outputs is True and back.exact_dtypes
    np.testing.assert_array_equal(back.tensors[""], x)
    back = hop(request_document(InferRequest(model="m", images=(b"\x89PNG", b"\xff\xd8"))))
    assert back.images == (b"\x89PNG", b"\xff\xd8") and back.outputs is False and not back.exact_dtypes


def reply(**kw: Any) -> InferReply:
    fields: dict[str, Any] = {
        "model": "m",
        "version": "1",
        "framework": "onnxruntime",
        "device": "cpu",
        "node": ServingNode("id-1", "b"),
        "batch_size": 2,
        "predictions": None,
        "outputs": {},
        "items": (ItemTimings(1, 2, 3, 4, 5, 15), ItemTimings(1.5, 2, 3, 4, 5, 15)),
        "timings": Timings(15, 14.5, 0, 0.5),
    }
    return InferReply(**{**fields, **kw})


def through_the_wire(r: InferReply) -> InferReply:
    raw = msgpack.packb(reply_document(r), use_bin_type=True, default=bodies._msgpack_default)
    return reply_from_document(msgpack.unpackb(raw))


def test_a_reply_with_predictions_and_a_route_survives_the_hop() -> None:
    route = Route("id-1", "warm", (RouteCandidate("id-1", False, True, 0.0, 1.5),), (Attempt("id-0", False, "x"),))
    predictions = ((Prediction(3, "3", 0.9),), (Prediction(1, "1", 0.5),))
    original = reply(predictions=predictions, route=route)
    assert through_the_wire(original) == original


def test_raw_outputs_and_labels_survive_the_hop_as_one_batch() -> None:
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    back = through_the_wire(reply(outputs={"logits": logits}, labels=tuple("abcdefghij")))
    np.testing.assert_array_equal(back.outputs["logits"], logits)
    assert back.labels == tuple("abcdefghij") and back.predictions is None


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"results": []},
        {**reply_document(reply(predictions=((), ()))), "batch_size": 3},
        {**reply_document(reply(predictions=((), ()))), "node": "b"},
        {**reply_document(reply(predictions=((), ()))), "results": [{"outputs": {"x": {"dtype": "f"}}}] * 2},
    ],
)
def test_a_malformed_reply_is_refused(doc: Any) -> None:
    with pytest.raises(MalformedReply):
        reply_from_document(doc)


def test_hop_headers() -> None:
    h = hop_from({FORWARDED: "a", TIMEOUT_MS: "2500", "traceparent": "00-x", "Other": "y"})
    assert h == Hop("a", 2.5, {"traceparent": "00-x"}) and h.forwarded
    assert hop_from({TIMEOUT_MS: "-1"}) == Hop() and not Hop().forwarded
    assert hop_from({TIMEOUT_MS: "soon"}).timeout is None
    assert h.headers("me", 0.0001) == {FORWARDED: "me", TIMEOUT_MS: "1", "traceparent": "00-x"}
