"""Build the worker Docker images offline (called by scripts/build-images; run it with the repo's .venv python).

For each image: a wheelhouse build/wheels/<image>/ filled by `pip download` at the versions this .venv runs (so the
container runs what the node was tested with), a content hash of its inputs (Dockerfile, worker sources, wheel
names, base image), and `docker build` from a minimal context unless an image with that hash in its
`org.carml.inputs` label exists already. The CPU images build from carml-base:bookworm, a debootstrap'ed Debian made
here when missing, since no Docker registry is reachable. Talks to the engine in $DOCKER_HOST.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "build" / "wheels"
BASE_IMAGE = "carml-base:bookworm"
BASE_CACHE = Path(os.environ.get("CARML_BASE_CACHE", "/var/cache/carml/debootstrap-bookworm"))
DEBIAN_MIRROR = os.environ.get("CARML_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PYTHON_VERSION = "3.11"  # Debian bookworm's python3, and the cp311 wheels' tag
# manylinux_2_17 .. 2_35: glibc 2.35 is Ubuntu 22.04 (the CUDA base), below bookworm's 2.36.
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 36))]
# The worker program and nothing else of the repository (carml_mesh/exec/worker imports only its own package).
WORKER_FILES = [
    "carml_mesh/__init__.py",
    "carml_mesh/exec/__init__.py",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "carml_mesh/exec/worker").glob("*.py")),
]
COMMON = ["numpy", "pillow", "msgpack"]


@dataclass(frozen=True)
class Image:
    name: str  # onnxruntime-cpu, ...
    framework: str  # the worker's --framework
    dist: str  # the framework's distribution in the image
    device: str  # cpu | cuda

    @property
    def tag(self) -> str:
        return f"carml-worker:{self.name}"

    @property
    def dockerfile(self) -> Path:
        return ROOT / "images" / f"{self.name}.Dockerfile"

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def default_base(self) -> str:
        """The Dockerfile's own `ARG BASE=` default."""
        for line in self.dockerfile.read_text().splitlines():
            if line.startswith("ARG BASE="):
                return line.partition("=")[2].strip()
        raise SystemExit(f"{self.dockerfile} has no ARG BASE=")


IMAGES = [
    Image("onnxruntime-cpu", "onnxruntime", "onnxruntime", "cpu"),
    Image("pytorch-cpu", "pytorch", "torch", "cpu"),
    Image("onnxruntime-gpu", "onnxruntime", "onnxruntime-gpu", "cuda"),
    Image("pytorch-gpu", "pytorch", "torch", "cuda"),
]
# Where the .venv's version of each image's framework comes from (the venv holds the CPU builds).
VENV_DIST = {"onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime", "torch": "torch"}


@dataclass
class Row:
    image: str
    version: str = "-"
    size: str = "-"
    status: str = "-"
    seconds: float = 0.0


def say(msg: str) -> None:
    print(f"\033[1m[build-images]\033[0m {msg}", flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, **kw)


def run_quietly(cmd: list[str], drop: str | None = None, **kw: Any) -> None:
    """Run, showing the output only on failure; with `drop`, always, less the lines that contain `drop`."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if drop is not None or done.returncode != 0:
        sys.stdout.write("".join(line for line in done.stdout.splitlines(True) if not drop or drop not in line))
    done.check_returncode()


def docker_out(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, text=True, capture_output=True).stdout.strip()


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def human(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


# ---------------------------------------------------------------------------------------------------- base image


def ensure_base() -> str:
    """carml-base:bookworm: a minbase Debian bookworm with python3 (3.11) and venv. 'built' or 'reused'."""
    if image_exists(BASE_IMAGE):
        return "reused"
    rootfs, stamp = BASE_CACHE / "rootfs", BASE_CACHE / "complete"
    if not stamp.exists():
        debootstrap(rootfs)
        stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    say(f"importing {rootfs} as {BASE_IMAGE}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["/bin/bash"]',
        f"LABEL org.opencontainers.image.title={BASE_IMAGE}",
    ]
    cmd = ["docker", "import", *(a for c in changes for a in ("-c", c)), "-", BASE_IMAGE]
    run(cmd, stdin=tar.stdout, stdout=subprocess.DEVNULL)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0:
        raise SystemExit("tar of the base rootfs failed")
    return "built"


def debootstrap(rootfs: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"building {BASE_IMAGE} needs debootstrap as root; run as root or provide the image")
    if shutil.which("debootstrap") is None:
        say("installing debootstrap with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run_quietly(["apt-get", "update", "-qq"], env=env)
        run_quietly(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], env=env)
    partial = rootfs.with_name("rootfs.partial")
    unmount_below(partial)
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"debootstrap bookworm into {partial} (about a minute)")
    packages = "--include=python3,python3-venv,ca-certificates"
    run_quietly(["debootstrap", "--variant=minbase", packages, "bookworm", str(partial), DEBIAN_MIRROR])
    # The .debs debootstrap downloaded, and host files it copied in (docker mounts its own resolv.conf and hostname).
    for junk in [*partial.glob("var/cache/apt/archives/*.deb"), *partial.glob("var/lib/apt/lists/*_Packages")]:
        junk.unlink()
    for name in ("etc/resolv.conf", "etc/hostname"):
        (partial / name).unlink(missing_ok=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    partial.rename(rootfs)


def unmount_below(path: Path) -> None:
    """An interrupted debootstrap leaves /proc and /sys mounted in the target: never rmtree through them."""
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


# ---------------------------------------------------------------------------------------------------- wheelhouse


def venv_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{dist} is not installed in {sys.prefix}: run scripts/setup first") from None


def venv_closure(names: list[str]) -> dict[str, str]:
    """The .venv's versions of `names` and everything they need (on this platform), by canonical name."""
    pins: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not in the venv: pip picks a version
        pins[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return pins


def requirements(image: Image) -> tuple[list[str], dict[str, str]]:
    """The requirements to download, and the .venv pins that constrain their dependencies."""
    version = venv_version(VENV_DIST[image.dist])
    if image.dist == "torch" and image.gpu:
        # PyPI's plain 2.13.0 is the CUDA build; exclude the local CPU build that this machine's pip config finds.
        public = version.partition("+")[0]
        framework = f"torch=={public}" + (f",!={version}" if "+" in version else "")
    elif image.dist == "onnxruntime-gpu":
        # onnxruntime-gpu is released after onnxruntime and can lag it: the newest one not newer than the .venv's.
        framework = f"onnxruntime-gpu<={version}"
    else:
        framework = f"{image.dist}=={version}"
    reqs = [framework, *(f"{d}=={venv_version(d)}" for d in COMMON)]
    pins = venv_closure([VENV_DIST[image.dist], *COMMON])
    for dist in ("onnxruntime", "onnxruntime-gpu", "torch"):  # the framework's pin is the requirement itself
        pins.pop(dist, None)
    return reqs, pins


def fill_wheelhouse(image: Image) -> list[Path]:
    """build/wheels/<image>/: the wheels, downloaded once per set of requirements and kept."""
    dest = WHEELS / image.name
    reqs, pins = requirements(image)
    key = {"requirements": reqs, "constraints": pins, "python": PYTHON_VERSION, "platforms": PLATFORMS}
    stamp = dest / ".wheelhouse.json"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded and recorded["key"] == key and all((dest / f).is_file() for f in recorded["files"]):
        wheels = [dest / f for f in recorded["files"]]
        check_wheels(image, wheels)
        say(f"{image.name}: wheelhouse {dest.relative_to(ROOT)} up to date ({len(wheels)} wheels)")
        return wheels
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    say(f"{image.name}: pip download {' '.join(reqs)} (+ dependencies at the .venv's versions)")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="carml-constraints-") as constraints:
        constraints.write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        constraints.flush()
        # --only-binary with an explicit interpreter and platforms: pip must not build anything from a sdist for this
        # host; the image's python3 is CPython 3.11 on glibc >= 2.35.
        target = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
        target += [a for p in PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), *target]
        cmd += ["-c", constraints.name, *reqs]
        started = time.perf_counter()
        try:
            # This machine's pip.conf names a file:// index that lacks most projects: pip warns once per project.
            run_quietly(cmd, drop="is ignored: it is neither a file nor a directory")
            wheels = sorted(partial.glob("*.whl"))
            check_wheels(image, wheels)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    wheels = [dest / w.name for w in wheels]
    total = sum(w.stat().st_size for w in wheels)
    say(f"{image.name}: {len(wheels)} wheels, {human(total)}, in {time.perf_counter() - started:.1f}s")
    stamp.write_text(json.dumps({"key": key, "files": [w.name for w in wheels]}, indent=1, sort_keys=True) + "\n")
    return wheels


def check_wheels(image: Image, wheels: list[Path]) -> None:
    """The torch wheel must be the build the image is named for: loudly refuse a CUDA torch in a CPU image."""
    if image.dist != "torch":
        return
    torch = [w for w in wheels if w.name.startswith("torch-")]
    if len(torch) != 1:
        raise SystemExit(f"{image.name}: expected one torch wheel, found {[w.name for w in torch]}")
    with zipfile.ZipFile(torch[0]) as whl:
        metadata = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line for line in whl.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    cuda = [r for r in requires if "nvidia-" in r or "triton" in r]
    cuda += [w.name for w in wheels if w.name.startswith(("nvidia_", "nvidia-", "triton-"))]
    if not image.gpu and (cuda or "+cpu" not in torch[0].name):
        raise SystemExit(
            f"{image.name}: {torch[0].name} is not the CPU build of torch (CUDA dependencies: {cuda or 'none'}, "
            f"'+cpu' not in the name?). The CPU wheel comes from this machine's local wheel directory; "
            f"an unpinned torch from PyPI is a multi-GB CUDA build."
        )
    if image.gpu and "+cpu" in torch[0].name:
        raise SystemExit(f"{image.name}: {torch[0].name} is the CPU build of torch, not a CUDA one")
    say(f"{image.name}: {torch[0].name} checked: {'CUDA' if image.gpu else 'CPU'} build")


# ---------------------------------------------------------------------------------------------------- images


def inputs_hash(image: Image, wheels: list[Path], base: str) -> str:
    """What the image is made of; equal hashes mean an equal image, so the build can be skipped."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("Dockerfile", image.dockerfile.read_bytes())
    for rel in WORKER_FILES:
        add(rel, (ROOT / rel).read_bytes())
    add("wheels", "\n".join(sorted(w.name for w in wheels)).encode())
    # The base's id, not only its name: a re-debootstrapped base is another base.
    base_id = docker_out("image", "inspect", "--format", "{{.Id}}", base) if image_exists(base) else ""
    add("base", f"{base}@{base_id}".encode())
    return h.hexdigest()


def find_built(inputs: str) -> str | None:
    ids = docker_out("images", "--quiet", "--no-trunc", "--filter", f"label=org.carml.inputs={inputs}").split()
    return ids[0] if ids else None


def superseded(images: list[dict[str, str]], keep: int) -> list[str]:
    """Ids of untagged builds to remove: of each (framework, device), all but the ``keep`` newest.

    ``images`` are rows of ``docker image ls --format json`` (ID, Tag, CreatedAt) joined with their labels. Untagged
    builds stay as a cache, so that going back to an earlier revision reuses its image; beyond ``keep`` they are
    only disk.
    """
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in images:
        if row.get("Tag") in (None, "", "<none>"):
            groups.setdefault((row.get("framework", ""), row.get("device", "")), []).append(row)
    drop: list[str] = []
    for rows in groups.values():
        rows.sort(key=lambda r: r.get("CreatedAt", ""), reverse=True)
        drop += [r["ID"] for r in rows[keep:]]
    return drop


def prune(keep: int) -> None:
    """Remove worker images older than the ``keep`` newest untagged builds of their framework and device."""
    lines = docker_out("image", "ls", "--filter", "label=org.carml.inputs", "--format", "{{json .}}").splitlines()
    rows: list[dict[str, str]] = []
    for line in lines:
        row = json.loads(line)
        labels = docker_out(
            "image",
            "inspect",
            "--format",
            '{{index .Config.Labels "org.carml.framework"}} {{index .Config.Labels "org.carml.device"}}',
            row["ID"],
        ).split()
        if len(labels) == 2:
            row["framework"], row["device"] = labels
            rows.append(row)
    drop = superseded(rows, keep)
    if drop:
        subprocess.run(["docker", "image", "rm", *drop], capture_output=True)  # one in use by a container stays
        say(f"pruned {len(drop)} superseded worker image(s), keeping {keep} untagged build(s) per image")


def make_context(image: Image, wheels: list[Path], into: Path) -> None:
    """The build context: the Dockerfile, wheels/ and the worker files at their repository paths. Nothing else."""
    shutil.copy2(image.dockerfile, into / "Dockerfile")
    for rel in WORKER_FILES:
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, into / rel)
    (into / "wheels").mkdir()
    for wheel in wheels:
        try:
            os.link(wheel, into / "wheels" / wheel.name)  # the torch wheel is 190 MB: don't copy it
        except OSError:
            shutil.copy2(wheel, into / "wheels" / wheel.name)


def build(image: Image, base: str, rebuild: bool, row: Row) -> None:
    started = time.perf_counter()
    wheels = fill_wheelhouse(image)
    framework = next(w for w in wheels if w.name.startswith(image.dist.replace("-", "_") + "-"))
    row.version = framework.name.split("-")[1]
    if row.version != venv_version(VENV_DIST[image.dist]):
        say(f"{image.tag}: NOTE: {image.dist} {row.version}, not the .venv's {venv_version(VENV_DIST[image.dist])}")
    inputs = inputs_hash(image, wheels, base)
    existing = None if rebuild else find_built(inputs)
    if existing:
        docker_out("tag", existing, image.tag)  # the tag may have moved to another build meanwhile
        say(f"{image.tag}: up to date (inputs {inputs[:12]}), reused")
        row.status = "reused"
    else:
        say(f"{image.tag}: building from {base} (inputs {inputs[:12]})")
        (ROOT / "build").mkdir(exist_ok=True)
        # Under build/ rather than /tmp: the same file system as the wheelhouse, so wheels are hard links.
        with tempfile.TemporaryDirectory(prefix=f"context-{image.name}-", dir=ROOT / "build") as ctx:
            make_context(image, wheels, Path(ctx))
            build_args = {"BASE": base, "FRAMEWORK_VERSION": row.version, "INPUTS": inputs}
            cmd = ["docker", "build", "--force-rm", "--tag", image.tag]
            cmd += [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
            if rebuild:
                cmd.append("--no-cache")
            if not image.gpu:
                cmd += ["--network", "none"]  # proof that the CPU builds need nothing from outside
            run([*cmd, ctx])
        row.status = "built"
    row.size = human(int(docker_out("image", "inspect", "--format", "{{.Size}}", image.tag)))
    row.seconds = time.perf_counter() - started


@functools.cache
def gpu_base_available(base: str) -> bool:
    if image_exists(base):
        return True
    say(f"{base} is not here: trying docker pull (needs a registry)")
    try:
        pulled = subprocess.run(["docker", "pull", base], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    if pulled.returncode != 0:
        say(f"docker pull {base}: {(pulled.stderr.strip().splitlines() or ['failed'])[-1]}")
    return pulled.returncode == 0


def print_table(rows: list[Row]) -> None:
    header = ("image", "framework version", "size", "status", "seconds")
    lines = [header, *((r.image, r.version, r.size, r.status, f"{r.seconds:.1f}") for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print()
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="also the CUDA images (need a registry for their base)")
    parser.add_argument(
        "--only", nargs="+", metavar="IMAGE", choices=[i.name for i in IMAGES], help="build only these images"
    )
    parser.add_argument(
        "--base",
        default=BASE_IMAGE,
        help=f"base of the CPU images (default {BASE_IMAGE}, made here when missing; "
        "python:3.11-slim where a registry is reachable)",
    )
    parser.add_argument("--gpu-base", help="base of the CUDA images (default: each Dockerfile's ARG BASE)")
    parser.add_argument("--rebuild", action="store_true", help="build even when an image with the same inputs exists")
    parser.add_argument(
        "--keep",
        type=int,
        default=3,
        metavar="N",
        help="untagged earlier builds kept per image, for switching revisions (default 3); older ones are removed",
    )
    args = parser.parse_args(argv)
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise SystemExit(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'the default socket')}: "
            "run scripts/docker-engine (scripts/build-images does)"
        )
    images = [i for i in IMAGES if (i.name in args.only if args.only else not i.gpu or args.gpu)]
    rows: list[Row] = []
    total = time.perf_counter()

    if any(not i.gpu for i in images) and args.base == BASE_IMAGE:
        started = time.perf_counter()
        status = ensure_base()
        size = human(int(docker_out("image", "inspect", "--format", "{{.Size}}", BASE_IMAGE)))
        rows.append(Row(BASE_IMAGE, "python 3.11", size, status, time.perf_counter() - started))

    failed = False
    for image in images:
        row = Row(image.tag)
        rows.append(row)
        base = (args.gpu_base or image.default_base()) if image.gpu else args.base
        if image.gpu and not gpu_base_available(base):
            row.status = "skipped"
            say(
                f"{image.tag}: cannot be built offline: its base {base} is not present and no Docker registry is "
                "reachable. Build it where a registry is, or pass --gpu-base with a local CUDA image that has "
                "Python 3.11."
            )
            continue
        try:
            build(image, base, args.rebuild, row)
        except subprocess.CalledProcessError as exc:
            failed, row.status = True, "FAILED"
            say(f"{image.tag}: FAILED: {' '.join(map(str, exc.cmd[:4]))} ... exited with status {exc.returncode}")
        except SystemExit as exc:
            failed, row.status = True, "FAILED"
            say(f"{image.tag}: FAILED: {exc}")
    if not failed and args.keep >= 0:
        prune(args.keep)
    print_table(rows)
    say(f"done in {time.perf_counter() - total:.1f}s (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
