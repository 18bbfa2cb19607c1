"""The OpenAPI 3.1 document of the node's HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from .auth import Access, access_for

_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    reasons = {
        400: "Bad input",
        401: "The API token is missing or wrong (WWW-Authenticate: Bearer)",
        404: "Unknown model, version, framework or device",
        409: "The name and version are published already (add ?replace=true), or cannot be withdrawn here",
        413: "Too large",
        415: "Unsupported Content-Type",
        500: "The framework failed on input it had accepted",
        502: "A peer failed to supply an artifact, or served bytes that do not match their sha256",
        503: "Worker unavailable or model not servable here, or no member could serve it within the deadline",
    }
    for code in errors:
        out[str(code)] = {"description": reasons[code], "content": {"application/json": {"schema": _ERROR}}}
    return out


def _readiness(properties: dict[str, Any], ready: str, not_ready: str) -> dict[str, Any]:
    """KServe readiness: the same JSON object with 200 or 503 (not an error: the answer is "not yet")."""
    content = {"application/json": {"schema": {"type": "object", "required": ["ready"], "properties": properties}}}
    return {"200": {"description": ready, "content": content}, "503": {"description": not_ready, "content": content}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}},
    }


def _publishing_paths(model_path: dict[str, Any], version_path: dict[str, Any]) -> dict[str, Any]:
    """Publishing, replication and withdrawal (web/models_api.py); each needs the API token when one is set."""
    token: list[dict[str, list[str]]] = [{"bearer": []}]
    result = _json(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "frameworks": {"type": "array", "items": {"type": "object"}},
                "replaced": {"type": "boolean"},
                "unchanged": {"type": "boolean"},
            },
        }
    )
    per_peer = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "node": {"type": "string"},
                "name": {"type": "string"},
                "ok": {"type": "boolean"},
                "error": {"type": "string"},
            },
        },
    }
    return {
        "/api/models": {
            "post": {
                "summary": "Publish a model: its manifest and one artifact per framework, streamed and verified",
                "security": token,
                "parameters": [{"name": "replace", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "manifest": {"type": "string", "description": "the manifest's YAML text"},
                                    "artifact.onnxruntime": {"type": "string", "format": "binary"},
                                    "artifact.pytorch": {"type": "string", "format": "binary"},
                                    "labels": {"type": "string", "description": "one label per line"},
                                },
                                "required": ["manifest"],
                            }
                        }
                    },
                },
                "responses": _responses(result, 400, 401, 409, 413, 415),
            }
        },
        "/api/models/pull": {
            "post": {
                "summary": "Fetch a model's missing artifacts from a peer, verify them, and publish it here",
                "security": token,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "manifest": {"type": "string"},
                                    "source": {
                                        "type": "string",
                                        "description": "an alive member of the mesh, by node id or advertised URL, "
                                        "or an origin the node allows (--pull-allow-origin); anything else is a 400",
                                    },
                                    "replace": {"type": "boolean"},
                                },
                                "required": ["manifest", "source"],
                            }
                        }
                    },
                },
                "responses": _responses(result, 400, 401, 409, 415, 502),
            }
        },
        "/api/deployments": {
            "post": {
                "summary": "Ask peers (all, the N least loaded, or named ones) to pull a model this node holds",
                "security": token,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "to": {
                                        "oneOf": [
                                            {"const": "all"},
                                            {"type": "integer", "minimum": 1},
                                            {"type": "array", "items": {"type": "string"}},
                                        ]
                                    },
                                    "replace": {"type": "boolean"},
                                },
                                "required": ["name", "to"],
                            }
                        }
                    },
                },
                "responses": _responses(
                    _json({"type": "object", "properties": {"ok": {"type": "boolean"}, "results": per_peer}}),
                    400,
                    401,
                    404,
                    409,
                    415,
                ),
            }
        },
        "/api/models/{name}/versions/{version}": {
            "delete": {
                "summary": "Withdraw a published model here (?everywhere=true: and on the peers that serve it)",
                "security": token,
                "parameters": [
                    model_path,
                    version_path,
                    {"name": "everywhere", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": _responses(
                    _json({"type": "object", "properties": {"withdrawn": {"type": "boolean"}, "results": per_peer}}),
                    400,
                    401,
                    404,
                    409,
                ),
            }
        },
        "/api/artifacts/{sha256}": {
            "get": {
                "summary": "A stored artifact, streamed (peers pull from here)",
                "parameters": [{"name": "sha256", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The artifact's bytes", "content": {"application/octet-stream": {}}},
                    "400": {"description": "Not a sha256 digest", "content": {"application/json": {"schema": _ERROR}}},
                    "404": {"description": "Not in the store", "content": {"application/json": {"schema": _ERROR}}},
                },
            }
        },
    }


def _feedback_and_events_paths(model_path: dict[str, Any]) -> dict[str, Any]:
    """Feedback on models (web/feedback_api.py) and the live cluster stream (web/events.py)."""
    item = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "comment": {"type": "string"},
            "author": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "node": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
        },
    }
    listing = {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "count": {"type": "integer"},
            "average": {"type": ["number", "null"]},
            "rating_sum": {"type": "integer"},
            "items": {"type": "array", "items": item},
            "unreachable": {"type": "array", "items": {"type": "string"}},
            "node": {
                "type": "object",
                "description": "scope=local only: the node whose rows these are (a node is counted once)",
                "properties": {"id": {"type": "string"}},
            },
        },
    }
    created = _responses({"description": "unused"}, 400, 401, 404, 415)
    del created["200"]
    created["201"] = {"description": "Kept on this node", "content": {"application/json": {"schema": item}}}
    return {
        "/api/models/{name}/feedback": {
            "post": {
                "summary": "Rate a model (1 to 5) with an optional comment; kept on the node that receives it",
                "security": [{"bearer": []}],
                "parameters": [model_path],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                    "comment": {"type": "string", "maxLength": 2000},
                                    "author": {"type": "string", "maxLength": 100},
                                },
                                "required": ["rating"],
                            }
                        }
                    },
                },
                "responses": created,
            },
            "get": {
                "summary": "Feedback on a model from every node of the mesh, newest first",
                "parameters": [
                    model_path,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {
                        "name": "scope",
                        "in": "query",
                        "description": "local: this node's rows only (what nodes ask each other)",
                        "schema": {"type": "string", "enum": ["mesh", "local"]},
                    },
                ],
                "responses": _responses(_json(listing), 400, 404),
            },
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events: a 'cluster' event (GET /api/cluster's document), then one per change",
                "responses": {
                    "200": {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                    "503": {"description": "too many open streams (Retry-After), or the node is stopping"},
                },
            }
        },
    }


def _evaluations_paths() -> dict[str, Any]:
    """Accuracy evaluations (web/evaluations_api.py)."""
    id_path = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    scope = {
        "name": "scope",
        "in": "query",
        "description": "local: this node's evaluations only (what nodes ask each other)",
        "schema": {"type": "string", "enum": ["mesh", "local"]},
    }
    target = {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "framework": {"type": "string"},
        "device": {"type": "string"},
        "node": {"type": "string", "description": "run the inference on this member (id or name)"},
        "batch_size": {"type": "integer", "minimum": 1},
    }
    evaluation = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "done", "failed", "cancelled"]},
            "error": {"type": ["string", "null"]},
            "progress": {"type": "object"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "framework": {"type": ["string", "null"]},
            "device": {"type": ["string", "null"]},
            "node": {"type": "object", "description": "the node that ran the evaluation and keeps it"},
            "dataset": {"type": "object", "properties": {"name": {}, "images": {}, "classes": {}, "skipped": {}}},
            "top1": {"type": ["number", "null"]},
            "top5": {"type": ["number", "null"]},
            "per_class": {"type": "object"},
            "confusions": {
                "type": "array",
                "maxItems": 20,
                "items": {"type": "object", "properties": {"true": {}, "predicted": {}, "count": {}}},
            },
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    accepted = _responses({"description": "unused"}, 400, 401, 404, 409, 413, 415)
    del accepted["200"]
    accepted["202"] = {
        "description": "Started; follow it at url",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"id": {}, "status": {}, "url": {}}}}
        },
    }
    return {
        "/api/evaluations": {
            "post": {
                "summary": "Evaluate a classifier's accuracy (top-1, top-5, confusions) on the bundled digits split "
                "or an uploaded zip of images in class folders",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {**target, "dataset": {"type": "string", "enum": ["digits"]}},
                                "required": ["model", "dataset"],
                            }
                        },
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    **{k: {"type": "string"} for k in target},
                                    "dataset": {"type": "string", "format": "binary", "description": "a .zip"},
                                },
                                "required": ["model", "dataset"],
                            }
                        },
                    },
                },
                "responses": accepted,
            },
            "get": {
                "summary": "Evaluations of every node of the mesh, newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    scope,
                ],
                "responses": _responses(
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "evaluations": {"type": "array", "items": evaluation},
                                "unreachable": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                    400,
                ),
            },
        },
        "/api/evaluations/{id}": {
            "get": {
                "summary": "One evaluation, with its progress while it runs; asks the peers when it is not here",
                "parameters": [id_path, scope],
                "responses": _responses(_json(evaluation), 400, 404),
            }
        },
        "/api/evaluations/{id}/cancel": {
            "post": {
                "summary": "Cancel a running evaluation (on whichever node runs it)",
                "security": [{"bearer": []}],
                "parameters": [id_path, scope],
                "responses": _responses(_json({"type": "object"}), 400, 401, 404),
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    model_path = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version_path = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    kserve_infer = {
        "summary": "Open Inference Protocol (KServe v2) inference, JSON or binary tensor extension",
        "requestBody": {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        "responses": _responses(
            {
                "description": "Inference response (JSON, or JSON header + binary tensors "
                "with Inference-Header-Content-Length)"
            },
            400,
            404,
            413,
            500,
            503,
        ),
    }
    model_ready = _readiness(
        {"name": {"type": "string"}, "ready": {"type": "boolean"}}, "Loaded", "Not loaded by any worker here yet"
    )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "carml-mesh node API",
            "version": __version__,
            "description": "Every carml-node serves this API. Bodies are JSON or msgpack "
            '(Content-Type/Accept: application/msgpack); errors are {"error": "..."}.',
        },
        "paths": {
            "/api/health": {
                "get": {"summary": "Liveness and readiness", "responses": _responses(_json(ref("Health")))}
            },
            "/api/node": {
                "get": {
                    "summary": "This node: id, hardware, frameworks, devices, models, workers",
                    "responses": _responses(_json(ref("Node"))),
                }
            },
            "/api/cluster": {
                "get": {
                    "summary": "The mesh as this node sees it: members, their states and cards, gossip statistics",
                    "responses": _responses(_json({"type": "object"})),
                }
            },
            "/api/models": {
                "get": {
                    "summary": "Models this node serves",
                    "responses": _responses(
                        _json({"type": "object", "properties": {"models": {"type": "array", "items": ref("Model")}}})
                    ),
                }
            },
            "/api/models/{name}": {
                "get": {
                    "summary": "One model with its manifest",
                    "parameters": [model_path, {"name": "version", "in": "query", "schema": {"type": "string"}}],
                    "responses": _responses(_json(ref("Model")), 404),
                }
            },
            "/api/predict": {
                "post": {
                    "summary": "Classify images or run tensors through a model",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": ref("PredictRequest")},
                            "application/msgpack": {"schema": ref("PredictRequest")},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "model": {"type": "string"},
                                        "version": {"type": "string"},
                                        "framework": {"type": "string"},
                                        "device": {"type": "string"},
                                        "node": {
                                            "type": "string",
                                            "description": "run on this member (id or name) or fail",
                                        },
                                        "top_k": {"type": "integer"},
                                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    },
                                    "required": ["model", "image"],
                                }
                            },
                        },
                    },
                    "responses": _responses(_json(ref("PredictResponse")), 400, 404, 413, 415, 500, 503),
                }
            },
            "/api/samples": {
                "get": {
                    "summary": "Bundled sample images",
                    "responses": _responses(
                        _json(
                            {
                                "type": "object",
                                "properties": {"samples": {"type": "array", "items": {"type": "object"}}},
                            }
                        )
                    ),
                }
            },
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/v2": {"get": {"summary": "KServe v2 server metadata", "responses": {"200": {"description": "OK"}}}},
            "/v2/health/live": {"get": {"summary": "KServe v2 liveness", "responses": {"200": {"description": "OK"}}}},
            "/v2/health/ready": {
                "get": {
                    "summary": "KServe v2 readiness",
                    "responses": _readiness({"ready": {"type": "boolean"}}, "Ready", "Still loading models"),
                }
            },
            "/v2/models/{name}": {
                "get": {
                    "summary": "KServe v2 model metadata",
                    "parameters": [model_path],
                    "responses": _responses({"description": "OK"}, 404),
                }
            },
            "/v2/models/{name}/versions/{version}": {
                "get": {
                    "summary": "KServe v2 model metadata",
                    "parameters": [model_path, version_path],
                    "responses": _responses({"description": "OK"}, 404),
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "summary": "KServe v2 model readiness",
                    "parameters": [model_path],
                    "responses": {**model_ready, **_responses(model_ready["200"], 404)},
                }
            },
            "/v2/models/{name}/versions/{version}/ready": {
                "get": {
                    "summary": "KServe v2 model readiness",
                    "parameters": [model_path, version_path],
                    "responses": {**model_ready, **_responses(model_ready["200"], 404)},
                }
            },
            "/v2/models/{name}/infer": {"post": {**kserve_infer, "parameters": [model_path]}},
            "/v2/models/{name}/versions/{version}/infer": {
                "post": {**kserve_infer, "parameters": [model_path, version_path]}
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the node's --api-token; needed by changes, and by everything but /api/health "
                    "with --protect-all",
                }
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string"},
                        "ready": {"type": "boolean"},
                        "node": {"type": "string"},
                        "uptime_s": {"type": "number"},
                    },
                },
                "Node": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "hardware": {"type": "object"},
                        "frameworks": {"type": "array", "items": {"type": "object"}},
                        "devices": {"type": "array", "items": {"type": "string"}},
                        "models": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Model": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "description": {"type": "string"},
                        "license": {"type": "string"},
                        "frameworks": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "sha256": {"type": ["string", "null"]},
                                    "available": {"type": "boolean"},
                                    "loaded": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                        "attributes": {"type": "object"},
                    },
                },
                "Tensor": {
                    "type": "object",
                    "properties": {
                        "dtype": {
                            "type": "string",
                            "enum": [
                                "bool",
                                "uint8",
                                "uint16",
                                "uint32",
                                "uint64",
                                "int8",
                                "int16",
                                "int32",
                                "int64",
                                "float16",
                                "float32",
                                "float64",
                            ],
                        },
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "data": {"description": "nested or flat list of numbers; raw little-endian bytes in msgpack"},
                    },
                },
                "PredictRequest": {
                    "type": "object",
                    "required": ["model", "inputs"],
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "framework": {"type": "string", "enum": ["onnxruntime", "pytorch"]},
                        "device": {"type": "string"},
                        "node": {"type": "string", "description": "run on this member (id or name) or fail"},
                        "top_k": {"type": "integer", "minimum": 1, "default": 5},
                        "outputs": {
                            "oneOf": [
                                {"type": "boolean"},
                                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                            ],
                            "default": False,
                            "description": "raw output tensors instead of the model's predictions: all of them "
                            "(true) or these names; a classification model's reply then holds its labels",
                        },
                        "exact_dtypes": {
                            "type": "boolean",
                            "default": False,
                            "description": "refuse a tensor of another element type instead of converting it",
                        },
                        "trace": {
                            "type": "string",
                            "enum": ["none", "application", "model", "framework"],
                            "description": "this request's trace level (else X-Carml-Trace-Level, else the node's)",
                        },
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "properties": {
                                            "image": {
                                                "type": "string",
                                                "description": "base64 in JSON, raw bytes in msgpack",
                                            }
                                        },
                                    },
                                    {"type": "object", "properties": {"tensor": ref("Tensor")}},
                                    {
                                        "type": "object",
                                        "properties": {
                                            "tensors": {"type": "object", "additionalProperties": ref("Tensor")}
                                        },
                                    },
                                ]
                            },
                        },
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "framework": {"type": "string"},
                        "device": {"type": "string"},
                        "node": {"type": "object"},
                        "batch_size": {"type": "integer"},
                        "labels": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "the model's class labels, with raw outputs of a classification model",
                        },
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "predictions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "index": {"type": "integer"},
                                                "label": {"type": "string"},
                                                "probability": {"type": "number"},
                                            },
                                        },
                                    },
                                    "outputs": {"type": "object", "additionalProperties": ref("Tensor")},
                                    "timings_ms": {
                                        "type": "object",
                                        "properties": {
                                            k: {"type": "number"}
                                            for k in (
                                                "decode",
                                                "preprocess",
                                                "queue",
                                                "compute",
                                                "postprocess",
                                                "total",
                                            )
                                        },
                                    },
                                },
                            },
                        },
                        "timings_ms": {"type": "object"},
                    },
                },
            },
        },
    }
    for path, methods in _publishing_paths(model_path, version_path).items():
        document["paths"].setdefault(path, {}).update(methods)
    for path, methods in _feedback_and_events_paths(model_path).items():
        document["paths"].setdefault(path, {}).update(methods)
    for path, methods in _evaluations_paths().items():
        document["paths"].setdefault(path, {}).update(methods)
    from .bench_api import openapi_paths as benchmark_paths  # there, beside the routes it describes

    for path, methods in benchmark_paths().items():
        document["paths"].setdefault(path, {}).update(methods)
    from .utilisation_api import openapi_paths as utilisation_paths
    from .zipkin import openapi_paths as zipkin_paths

    for paths in (utilisation_paths(), zipkin_paths(), _page_paths()):
        for path, methods in paths.items():
            document["paths"].setdefault(path, {}).update(methods)
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            _add_common_answers(path, method, operation)
    return document


def _add_common_answers(path: str, method: str, operation: dict[str, Any]) -> None:
    """What every operation can answer besides its own: 401 where auth.py's rules ask for the token (and the
    security that says when), and 400 and 413 where there is a body (malformed; over --max-body-mb)."""
    responses = operation["responses"]
    access = access_for(method.upper(), path)
    if access is Access.MUTATE:
        operation["security"] = [{"bearer": []}]
    elif access is Access.READ:
        operation["security"] = [{}, {"bearer": []}]  # the token is needed only with --protect-all
    else:
        operation.pop("security", None)
    codes = [401] if access is not Access.OPEN else []
    if "requestBody" in operation:
        codes += [400, 413]
    for code in codes:
        responses.setdefault(str(code), _responses({}, code)[str(code)])


def _page_paths() -> dict[str, Any]:
    """The page (web/app.py): its HTML, its scripts and styles, and the bundled sample images."""
    file = {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = {"description": "No such file", "content": {"application/json": {"schema": _ERROR}}}
    return {
        "/": {
            "get": {
                "summary": "The page: try models, publish, benchmark, watch the cluster",
                "responses": {"200": {"description": "OK", "content": {"text/html": {}}}},
            }
        },
        "/static/{file}": {
            "get": {
                "summary": "The page's scripts and styles",
                "parameters": [file],
                "responses": {
                    "200": {"description": "OK", "content": {"text/javascript": {}, "text/css": {}, "text/html": {}}},
                    "404": missing,
                },
            }
        },
        "/samples/{file}": {
            "get": {
                "summary": "A bundled sample image (see /api/samples)",
                "parameters": [file],
                "responses": {"200": {"description": "OK", "content": {"image/*": {}}}, "404": missing},
            }
        },
    }
