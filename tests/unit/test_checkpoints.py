"""Checkpoint directories: atomic commit, manifest digests, pack/unpack round trip."""

import io
import tarfile

import pytest

from rstar.checkpoints import CheckpointError, atomic_dir, commit_dir, pack, unpack, verify_dir


def make_ckpt(tmp_path, name="ckpt", payload=b"\x00weights" * 1000):
    out = tmp_path / name
    tmp = atomic_dir(out)
    (tmp / "model.safetensors").write_bytes(payload)
    (tmp / "config.json").write_text('{"a": 1}')
    (tmp / "sub").mkdir()
    (tmp / "sub" / "tok.json").write_text("{}")
    commit_dir(tmp, out)
    return out


def test_commit_writes_manifest_and_replaces_atomically(tmp_path):
    d = make_ckpt(tmp_path)
    verify_dir(d)
    d2 = make_ckpt(tmp_path, payload=b"new")
    assert (d2 / "model.safetensors").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or old dirs left


def packed(d):
    buf = io.BytesIO()
    digest = pack(d, buf)
    return buf.getvalue(), digest


def test_pack_unpack_round_trips_bit_exactly(tmp_path):
    d = make_ckpt(tmp_path)
    data, digest = packed(d)
    assert packed(d) == (data, digest)  # deterministic
    out = unpack(io.BytesIO(data), digest, tmp_path / "copy")
    for p in d.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(d)).read_bytes() == p.read_bytes()


def test_corrupt_file_and_wrong_digest_are_refused(tmp_path):
    d = make_ckpt(tmp_path)
    data, digest = packed(d)
    with pytest.raises(CheckpointError, match="does not match"):
        unpack(io.BytesIO(data[:-10] + b"0123456789"), digest, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    (d / "model.safetensors").write_bytes(b"flipped")
    with pytest.raises(CheckpointError, match="sha256"):
        verify_dir(d)


def test_truncated_or_hostile_archives_are_refused(tmp_path):
    import hashlib

    d = make_ckpt(tmp_path)
    data, _ = packed(d)
    half = data[: len(data) // 2]
    with pytest.raises(CheckpointError):
        unpack(io.BytesIO(half), hashlib.sha256(half).hexdigest(), tmp_path / "half")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    evil = buf.getvalue()
    with pytest.raises(CheckpointError):
        unpack(io.BytesIO(evil), hashlib.sha256(evil).hexdigest(), tmp_path / "evil")
    assert not (tmp_path / "escape.txt").exists()
