"""The OpenAPI 3.1 document of the node's HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    reasons = {
        400: "Bad input",
        404: "Unknown model, version, framework or device",
        413: "Too large",
        415: "Unsupported Content-Type",
        503: "Worker unavailable or model not servable here",
    }
    for code in errors:
        out[str(code)] = {"description": reasons[code], "content": {"application/json": {"schema": _ERROR}}}
    return out


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
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
            503,
        ),
    }
    return {
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
                                        "top_k": {"type": "integer"},
                                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    },
                                    "required": ["model", "image"],
                                }
                            },
                        },
                    },
                    "responses": _responses(_json(ref("PredictResponse")), 400, 404, 413, 415, 503),
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
                    "responses": {"200": {"description": "Ready"}, "503": {"description": "Still loading models"}},
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
                    "responses": _responses({"description": "OK"}, 404),
                }
            },
            "/v2/models/{name}/versions/{version}/ready": {
                "get": {
                    "summary": "KServe v2 model readiness",
                    "parameters": [model_path, version_path],
                    "responses": _responses({"description": "OK"}, 404),
                }
            },
            "/v2/models/{name}/infer": {"post": {**kserve_infer, "parameters": [model_path]}},
            "/v2/models/{name}/versions/{version}/infer": {
                "post": {**kserve_infer, "parameters": [model_path, version_path]}
            },
        },
        "components": {
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
                        "top_k": {"type": "integer", "minimum": 1, "default": 5},
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
            }
        },
    }
