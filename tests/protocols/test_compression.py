"""Every compression algorithm round-trips through a real delivery; choice rules hold."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from ecpds.core.compression import CODECS, CompressionError, choose, get_codec
from ecpds.core.protocols import ProtocolError
from ecpds.core.store import Store
from ecpds.core.transmit import SendRequest, send

# Compressible and incompressible parts, across several 1 MiB chunks.
DATA = (b"temperature 273.15 K; " * 60_000) + os.urandom(1_500_000) + b"tail"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, str]:
    store = Store([str(tmp_path_factory.mktemp("compression-store"))])
    object_id = os.urandom(8).hex()
    return store, object_id, store.write(object_id, [DATA]).adler32


@pytest.mark.parametrize("name", sorted(CODECS))
def test_round_trip_through_delivery(
    name: str, stored: tuple[Store, str, str], tmp_path: Path
) -> None:
    if name == "lbzip2":
        try:
            get_codec(name)
        except CompressionError as exc:
            pytest.skip(str(exc))
    store, object_id, adler = stored
    request = SendRequest(
        data_file_id=object_id,
        size=len(DATA),
        adler32=adler,
        host_name="packer",
        host_url=f"file://{tmp_path}",
        host_options={"chunk_size": 1 << 20},
        target="prod/out.grib",
        compression=name,
    )
    result = send(store, request, {}, progress=lambda n: None)
    codec = CODECS[name]
    assert result.target == f"prod/out.grib{codec.extension}"
    packed = (tmp_path / result.target).read_bytes()
    assert result.remote_size == len(packed) < len(DATA)
    pieces = [packed[i : i + 65_536] for i in range(0, len(packed), 65_536)]
    assert b"".join(codec.decompress(pieces)) == DATA
    if name == "zip":
        assert zipfile.ZipFile(io.BytesIO(packed)).read("out.grib") == DATA


def test_pattern_and_minimum_size_choose() -> None:
    assert choose("gzip", r"\.grib$", 100, "a.grib", 1000) is CODECS["gzip"]
    assert choose("gzip", r"\.grib$", 100, "a.nc", 1000) is None
    assert choose("gzip", None, 2000, "a.grib", 1000) is None
    assert choose(None, None, 0, "a.grib", 1000) is None
    with pytest.raises(CompressionError, match="unknown compression 'rar'"):
        choose("rar", None, 0, "a", 1)


def test_host_compression_follows_pattern(stored: tuple[Store, str, str], tmp_path: Path) -> None:
    store, object_id, adler = stored
    options = {"compression": "lz4", "compression_pattern": r"\.grib$"}
    for target, expected in [("x.grib", "x.grib.lz4"), ("x.txt", "x.txt")]:
        request = SendRequest(
            object_id, len(DATA), adler, "packer", f"file://{tmp_path}", options, target
        )
        assert send(store, request, {}, progress=lambda n: None).target == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.grib.lz4", "x.txt"]


def test_lbzip2_missing_is_a_clear_error(
    stored: tuple[Store, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    store, object_id, adler = stored
    request = SendRequest(
        object_id, len(DATA), adler, "packer", f"file://{tmp_path}", {}, "y", compression="lbzip2"
    )
    with pytest.raises(ProtocolError) as info:
        send(store, request, {}, progress=lambda n: None)
    assert "lbzip2 is not installed" in str(info.value)
    assert "packer" in str(info.value)
