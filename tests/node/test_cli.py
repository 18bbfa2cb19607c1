"""carml-node as users run it: a real process, signals, the client subcommands, broken manifests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHUTDOWN_LIMIT_S = 5.0  # the requirement: SIGINT/SIGTERM stop the node within 5 s


class RunningNode:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())


def start_node(tmp_path: Path, manifests: Path, *extra: str) -> RunningNode:
    cmd = [
        sys.executable,
        "-m",
        "carml_mesh.node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--manifests",
        str(manifests),
        "--log-level",
        "WARNING",
        "--gossip-port",
        "0",
        "--no-mdns",  # mDNS only ever inside the tests' own network namespaces
        "--executor",
        "local",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:  # readiness is announced on stdout, not guessed with sleeps
        if m := re.search(r"on (http://\S+?)/ ", line):
            url = m.group(1)
        if line.startswith("ready:"):
            return RunningNode(proc, url)
    code = proc.wait()
    proc.stdout.close()
    raise AssertionError(f"node exited with {code} before it was ready")


@pytest.fixture
def running(models_dir, tmp_path) -> Iterator[RunningNode]:
    node = start_node(tmp_path, REPO / "manifests")
    yield node
    node.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_node_and_workers(running: RunningNode, sig: signal.Signals) -> None:
    workers = [w["pid"] for w in running.get("/api/node")["workers"] if w["alive"]]
    assert len(workers) == 2  # onnxruntime and pytorch
    running.proc.send_signal(sig)
    assert running.proc.wait(timeout=SHUTDOWN_LIMIT_S) == 0
    assert not [pid for pid in workers if pid_alive(pid)]


def test_client_subcommands(running: RunningNode, models_dir) -> None:
    env = {**os.environ, "CARML_URL": running.url}
    out = subprocess.run(
        [sys.executable, "-m", "carml_mesh.node", "models"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "efficientnet-lite0" in out and "digits-cnn" in out
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "carml_mesh.node",
            "predict",
            "efficientnet-lite0",
            str(models_dir / "samples" / "chelsea.jpg"),
            str(models_dir / "samples" / "coffee.jpg"),
            "--top-k",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Egyptian cat" in out and "espresso" in out
    failed = subprocess.run(
        [sys.executable, "-m", "carml_mesh.node", "predict", "nope", str(models_dir / "samples" / "chelsea.jpg")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "unknown model 'nope'" in failed.stdout
    running.proc.terminate()
    running.proc.wait(timeout=SHUTDOWN_LIMIT_S)
    down = subprocess.run([sys.executable, "-m", "carml_mesh.node", "models"], env=env, capture_output=True, text=True)
    assert down.returncode != 0 and "cannot reach a node" in down.stderr


def test_broken_manifests_are_reported_and_skipped(models_dir, tmp_path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    good = (REPO / "manifests" / "digits-cnn.yml").read_text()
    artifact_dir = (REPO / "build" / "models" / "digits-cnn").as_posix()
    (manifests / "digits.yml").write_text(good.replace("../build/models/digits-cnn", artifact_dir))
    (manifests / "typo.yml").write_text(good.replace("name: digits-cnn", "name: typo").replace("license:", "licence:"))
    (manifests / "broken.yml").write_text("name: [unclosed\n")
    (manifests / "missing.yml").write_text(
        good.replace("name: digits-cnn", "name: missing").replace("../build/models/digits-cnn", str(tmp_path / "x"))
    )
    node = start_node(tmp_path, manifests)
    try:
        info = node.get("/api/node")
        problems = "\n".join(info["problems"])
        assert "typo.yml: licence: unknown field" in problems
        assert "broken.yml" in problems and "invalid YAML at line" in problems
        models = {m["name"]: m for m in info["models"]}
        assert set(models) == {"digits-cnn", "missing"}
        assert all(f["available"] for f in models["digits-cnn"]["frameworks"])
        missing = models["missing"]["frameworks"][0]
        assert not missing["available"] and "does not exist" in missing["problem"]
        node.proc.terminate()
        assert node.proc.wait(timeout=SHUTDOWN_LIMIT_S) == 0
    finally:
        node.close()


def test_validate_subcommand(tmp_path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: ok\nversion: '1'\ninputs: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "carml_mesh.node", "validate", str(REPO / "manifests" / "digits-cnn.yml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "ok    " in result.stdout and "bad.yml: inputs: must name at least one input" in result.stdout


def test_unusable_port_is_a_clear_error(tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "carml_mesh.node",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
                "--lazy",
                "--no-gossip",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and "cannot start" in result.stderr


def test_deploy_says_what_is_wrong_before_sending_anything(tmp_path, capsys) -> None:
    from carml_mesh.node.cli import main

    manifest = tmp_path / "m.yml"
    manifest.write_text((REPO / "manifests" / "digits-cnn.yml").read_text())
    url = ["--url", "http://127.0.0.1:9"]  # nothing listens there: each case fails before any request
    cases = [
        (["--artifact", "onnxruntime"], "give FRAMEWORK=PATH"),
        (["--artifact", "tensorflow=x.pb"], "the manifest has no tensorflow framework"),
        (["--artifact", f"onnxruntime={tmp_path / 'absent.onnx'}"], "absent.onnx is not a file"),
        ([], "model.onnx is not a file"),  # the manifest's own relative paths, from its folder
    ]
    for extra, fragment in cases:
        assert main(["deploy", str(manifest), *extra, *url]) == 2
        assert fragment in capsys.readouterr().err
    manifest.write_text("name: [")
    assert main(["deploy", str(manifest), *url]) == 2
    assert "invalid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--worker-pool", "0"], "--worker-pool must be between 1 and 64, got 0"),
        (["--max-queue-delay-ms", "-1"], "--max-queue-delay-ms must be 0 or more"),
        (["--batching", "maybe"], "invalid choice: 'maybe'"),
    ],
)
def test_bad_executor_flags_are_refused_with_their_name(flags: list[str], says: str, tmp_path) -> None:
    from carml_mesh.errors import ConfigError
    from carml_mesh.node.cli import build_parser, config_from_args

    if "--batching" in flags:  # argparse's own refusal: exit 2 with the flag named
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["serve", *flags])
        assert exc.value.code == 2
        return
    with pytest.raises(ConfigError, match=re.escape(says)):
        config_from_args(build_parser().parse_args(["serve", "--data-dir", str(tmp_path), *flags]))


def test_worker_pool_reaches_the_config(tmp_path) -> None:
    from carml_mesh.node.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--worker-pool", "3"]))
    assert config.worker_pool == 3
