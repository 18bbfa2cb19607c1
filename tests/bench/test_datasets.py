"""Datasets: zip safety (names, symlinks, bombs, sizes, lying entries), folders, and reading."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes

from carml_mesh.bench.datasets import ZipDataset, ZipLimits, scan_folder, scan_zip, zip_folder
from carml_mesh.errors import BadRequest, PayloadTooLarge


def _zip(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> zipfile.ZipFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buf.getvalue()))


PNG = png_bytes(np.zeros((8, 8), dtype=np.uint8))


# --- zip safety ---------------------------------------------------------------------------------------------------


def test_a_zip_of_class_folders_is_read_and_the_rest_skipped_and_counted() -> None:
    z = _zip(
        {"3/a.png": PNG, "3/b.PNG": PNG, "digits/7/c.png": PNG, "README.txt": b"x", "7/notes.csv": b"1,2", "x.png": PNG}
    )
    scan = scan_zip(z.infolist())
    assert [(i.name, i.label) for i in scan.items] == [("3/a.png", "3"), ("3/b.PNG", "3"), ("digits/7/c.png", "7")]
    assert scan.classes == ("3", "7")
    assert scan.skipped == 3
    assert any("README.txt (not an image)" in s for s in scan.skipped_examples)
    assert any("x.png (not in a class folder)" in s for s in scan.skipped_examples)


@pytest.mark.parametrize(
    ("name", "why"),
    [("../3/a.png", "'..'"), ("3/../../etc/a.png", "'..'"), ("/abs/3/a.png", "absolute"), ("C:\\3\\a.png", "absolute")],
)
def test_path_traversal_is_refused_naming_the_entry(name: str, why: str) -> None:
    info = zipfile.ZipInfo(name)
    info.file_size = info.compress_size = 10
    with pytest.raises(BadRequest, match=why) as err:
        scan_zip([info])
    assert repr(name) in str(err.value)


def test_a_symlink_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("3/a.png", PNG)
        link = zipfile.ZipInfo("3/b.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    with pytest.raises(BadRequest, match=r"'3/b.png' is a symbolic link"):
        scan_zip(zipfile.ZipFile(io.BytesIO(buf.getvalue())).infolist())


def test_a_compression_bomb_is_refused() -> None:
    z = _zip({"3/a.png": PNG, "3/bomb.png": b"\0" * (8 << 20)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(PayloadTooLarge, match=r"'3/bomb.png' expands \d+ times"):
        scan_zip(z.infolist())


def test_too_many_entries_and_too_many_bytes_are_refused() -> None:
    z = _zip({f"{n % 10}/{n}.png": PNG for n in range(30)})
    with pytest.raises(PayloadTooLarge, match="30 entries; at most 20"):
        scan_zip(z.infolist(), ZipLimits(max_entries=20))
    with pytest.raises(PayloadTooLarge, match="expands to more than 1000 bytes"):
        scan_zip(z.infolist(), ZipLimits(max_total_bytes=1000))
    with pytest.raises(PayloadTooLarge, match="uncompressed; at most 10"):
        scan_zip(z.infolist(), ZipLimits(max_file_bytes=10))


def test_an_empty_dataset_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"no image in a class folder.*2 file"):
        scan_zip(_zip({"a.txt": b"", "3/b.txt": b""}).infolist())


def test_a_lying_entry_size_is_caught_when_read(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("3/a.png", PNG)
    raw = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the only entry, made larger than the bytes stored
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (len(PNG) + 5).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    dataset = ZipDataset(path, name="d.zip")
    try:
        with pytest.raises(BadRequest, match=r"3/a\.png"):
            dataset.read([0])
    finally:
        dataset.close()


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(BadRequest, match="not a readable zip"):
        ZipDataset(path, name="d.zip")


def test_a_folder_is_scanned_like_a_zip_and_zipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.png").write_bytes(PNG)
    (root / "dog" / "b.jpg").write_bytes(PNG)
    (root / "dog" / "notes.txt").write_text("x")
    (root / "dog" / "link.png").symlink_to(root / "cat" / "a.png")
    scan = scan_folder(root)
    assert [(i.name, i.label) for i in scan.items] == [("cat/a.png", "cat"), ("dog/b.jpg", "dog")]
    assert scan.skipped == 2 and any("symbolic link" in s for s in scan.skipped_examples)
    out = tmp_path / "data.zip"
    zip_folder(root, out)
    dataset = ZipDataset(out, name="data.zip", owns_file=True)
    assert dataset.classes == ("cat", "dog") and len(dataset) == 2
    assert dataset.read([1])["images"] == (PNG,)
    dataset.close()
    assert not out.exists()
