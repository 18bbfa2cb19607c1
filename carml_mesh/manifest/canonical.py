"""The canonical form of a manifest: what a node stores for a published model and sends to its peers.

Pure: a validated `Manifest` in, a document (and its YAML text) out, such that ``parse_manifest`` of the document
gives the same manifest back. Labels are inline, and every artifact is a store reference ``{sha256: ...}``: no
path, no URL, nothing that names a file on the publisher's machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from .schema import InputSpec, Manifest


def canonical_document(manifest: Manifest, *, labels: tuple[str, ...], artifacts: Mapping[str, str]) -> dict[str, Any]:
    """``artifacts`` maps each framework of the manifest that is kept to its sha256 (others are left out)."""
    doc: dict[str, Any] = {"name": manifest.name, "version": manifest.version}
    for key in ("description", "license", "task"):
        if value := getattr(manifest, key):
            doc[key] = value
    if manifest.references:
        doc["references"] = list(manifest.references)
    if manifest.attributes:
        doc["attributes"] = dict(manifest.attributes)
    doc["inputs"] = [_input(i) for i in manifest.inputs]
    out = manifest.output
    parameters: dict[str, Any] = {
        "element_type": out.element_type,
        "dimensions": list(out.dimensions),
        "probabilities": out.probabilities,
    }
    if labels:
        parameters["labels"] = list(labels)
    doc["output"] = {"name": out.name, "type": out.type, "parameters": parameters}
    doc["frameworks"] = [
        {"name": f.name, "version": str(f.version), "artifact": {"sha256": artifacts[f.name]}}
        for f in manifest.frameworks
        if f.name in artifacts
    ]
    doc["devices"] = list(manifest.devices)
    doc["batching"] = {
        "max_batch_size": manifest.batching.max_batch_size,
        "max_queue_delay_ms": manifest.batching.max_queue_delay_ms,
    }
    return doc


def _input(spec: InputSpec) -> dict[str, Any]:
    parameters: dict[str, Any] = {"element_type": spec.element_type, "dimensions": list(spec.dimensions)}
    if spec.type == "image":
        resize: dict[str, Any] = {"interpolation": spec.interpolation}
        if spec.resize_shorter is not None:
            resize["shorter_side"] = spec.resize_shorter
        parameters.update(
            layout=spec.layout,
            color_mode=spec.color_mode,
            mean=list(spec.mean),
            scale=list(spec.scale),
            resize=resize,
            invert=spec.invert,
        )
        if spec.crop:
            parameters["crop"] = {"mode": "center"}
    return {"name": spec.name, "type": spec.type, "parameters": parameters}


def dump(doc: Mapping[str, Any]) -> str:
    """YAML text, keys in the document's order, stable from one run to the next."""
    text: str = yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
    return text
