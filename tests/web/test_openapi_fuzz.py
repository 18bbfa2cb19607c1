"""Schemathesis against /api/openapi.json of a real node: every operation, bounded (about a minute), reproducible.

The node is a real carml-node process (digits-cnn only, a fresh data dir, an API token); schemathesis is run as its
CLI (its pytest plugin does not work with this pytest) in deterministic mode, so a CI run repeats the last one
exactly. Phases: examples, coverage (boundary and schema-violating values for every parameter and body: the kind
of input that found the multipart 500s) and fuzzing (at most EXAMPLES_PER_OPERATION generated cases per operation),
positive and negative; no stateful phase (long chains of writes, minutes each). A case passes when the node answers
no 5xx, a status the document lists for the operation, a Content-Type the document gives for that status, a body
its schema accepts, and, where the document says an operation needs the token, a 401 without it (ignored_auth).

Every request carries the token, so the fuzz reaches the handlers behind the auth rules (publishing, withdrawal,
pulls, deployments, benchmarks, evaluations) instead of stopping at 401. Generated inputs stay inside the limits
the document states and the node enforces (benchmark durations, batch sizes, window_ms), so the node stays bounded;
a generated pull source is never a member of this lone node and is refused before any request leaves it, so the
pull endpoint stays in.

Left out: GET /api/events, a Server-Sent Events stream that never ends by design: a request to it never gets a
whole response to check, and each would hold a stream until the client timeout (tests/web/test_events.py covers it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nodeproc
import pytest

TOKEN = "fuzz-token-0123456789"
EXAMPLES_PER_OPERATION = 20
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth"
LEFT_OUT = "/api/events"
BOUND_S = 300  # a run takes about a minute here; this only stops a hung one


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[nodeproc.Proc]:
    tmp = tmp_path_factory.mktemp("fuzz")
    manifests = nodeproc.manifests_with(tmp, "fuzz", ["digits-cnn"])
    proc = nodeproc.wait_ready(nodeproc.launch(tmp, "fuzz", manifests, "--api-token", TOKEN))
    try:
        yield proc
    finally:
        nodeproc.stop(proc)


def test_every_operation_answers_as_documented(fuzzed_node: nodeproc.Proc, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    # the CLI beside this interpreter: schemathesis is a dev dependency of the same environment
    cli = Path(sys.executable).with_name("schemathesis")
    command = [
        str(cli),
        "run",
        f"{fuzzed_node.url}/api/openapi.json",
        "--phases=examples,coverage,fuzzing",
        f"--max-examples={EXAMPLES_PER_OPERATION}",
        "--generation-deterministic",
        f"--exclude-path={LEFT_OUT}",
        f"--header=Authorization: Bearer {TOKEN}",
        f"--checks={CHECKS}",
        "--request-timeout=30",
        "--report=json",
        f"--report-json-path={report}",
        "--no-color",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=BOUND_S)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    summary = json.loads(report.read_text())
    operations, cases = summary["operations"], summary["test_cases"]
    document = nodeproc.get_json(f"{fuzzed_node.url}/api/openapi.json")
    documented = sum(len(methods) for methods in document["paths"].values())
    # all but GET /api/events, and GET /api/openapi.json, which schemathesis reads as the schema and never fuzzes
    assert operations["selected"] == operations["tested"] == documented - 2
    assert cases["generated"] >= EXAMPLES_PER_OPERATION * operations["tested"] and cases["with_failures"] == 0, cases
