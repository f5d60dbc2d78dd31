"""Checkpoint directories: written atomically, hashed, packed for the Object Store.

A checkpoint is a Hugging Face model directory (``model.safetensors``, ``config.json``,
tokenizer files; a PPM adds its head, see ``actors.ppm``) plus ``MANIFEST.json`` listing the
sha256 of every file. ``save_model_dir`` writes into a temporary sibling and renames it into
place, so a reader never sees half a checkpoint. ``pack``/``unpack`` turn a directory into one
uncompressed tar for the broker (safetensors do not compress) and back, checking the digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing files, fails its digest, or is not a model directory."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(d: Path) -> dict[str, str]:
    files = {
        p.relative_to(d).as_posix(): file_sha256(p) for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (d / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    return files


def verify_dir(d: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present with its digest."""
    m = d / MANIFEST
    if not m.is_file():
        raise CheckpointError(f"{d}: no {MANIFEST}")
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{d}: unreadable manifest: {e}") from None
    for rel, digest in files.items():
        p = d / rel
        if not p.is_file():
            raise CheckpointError(f"{d}: missing {rel}")
        if file_sha256(p) != digest:
            raise CheckpointError(f"{d}: {rel} does not match its sha256")


def atomic_dir(out_dir: Path):
    """A temp dir beside ``out_dir``; ``commit(tmp)`` renames it into place (replacing any old one)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def commit_dir(tmp: Path, out_dir: Path) -> None:
    write_manifest(tmp)
    replace_dir(tmp, out_dir)


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then removed."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_dir(model, tokenizer, out_dir: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Save a transformers model (safetensors) and tokenizer to ``out_dir`` atomically."""
    tmp = atomic_dir(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


class _HashingWriter:
    """A write-only file that hashes what passes through it, so the tar is digested as it is written."""

    def __init__(self, out: BinaryIO):
        self.out, self.h = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.out.tell()


def pack(d: Path, out: BinaryIO) -> str:
    """Write the directory into ``out`` as one tar (deterministic order and metadata), streamed
    file by file so a checkpoint never sits in memory; returns the tar's sha256."""
    verify_dir(d)
    start = out.tell()
    w = _HashingWriter(out)
    with tarfile.open(fileobj=w, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # typeshed asks any fileobj for read/seek; mode "w" only writes and tells
        for p in sorted(d.rglob("*")):
            if p.is_file():
                info = tarfile.TarInfo(p.relative_to(d).as_posix())
                info.size = p.stat().st_size
                info.mtime = 0
                with open(p, "rb") as f:
                    tar.addfile(info, f)
    out.seek(start)
    return w.h.hexdigest()


def unpack(src: io.BufferedIOBase, sha256: str, out_dir: Path) -> Path:
    """Check the digest of the tar in ``src`` (read from its current position), extract it
    safely into ``out_dir`` atomically, verify the manifest. Streams: memory stays flat."""
    start = src.tell()
    got = hashlib.file_digest(src, "sha256").hexdigest()
    if got != sha256:
        raise CheckpointError(f"checkpoint digest {got[:12]}… does not match the pointer's {sha256[:12]}…")
    src.seek(start)
    tmp = atomic_dir(out_dir)
    try:
        with tarfile.open(fileobj=src, mode="r:") as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, .., links outside
        verify_dir(tmp)
        replace_dir(tmp, out_dir)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot unpack checkpoint: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
