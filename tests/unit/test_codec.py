"""Tree framing: compression, chunking, reassembly, and clear errors for bad bytes."""

from __future__ import annotations

import base64
import random
import zlib

import msgspec
import pytest

from broker.codec import (
    DIGEST,
    ENCODING,
    MSG_ID,
    PART,
    PARTS,
    TREE_ID,
    ChunkError,
    CodecError,
    Reassembler,
    decode_tree,
    encode_tree,
    frame_payload,
)
from rstar.schemas import Node, Problem, SchemaError, TreeResult, encode

MiB = 1024 * 1024


def _tree(n_nodes: int, text_len: int, seed: int = 0, tree_id: str = "tree-1") -> TreeResult:
    rng = random.Random(seed)
    problem = Problem(id="p-1", source="unit", question="What is 2 + 2?", answer="4")
    nodes = [Node(idx=0, parent=None, depth=0)]
    for i in range(1, n_nodes):
        # base64 of random bytes: compresses only to ~75%, so big trees must be chunked too
        text = base64.b64encode(rng.randbytes(text_len * 3 // 4)).decode()
        nodes.append(Node(idx=i, parent=i - 1, depth=i, text=text, code_output=str(i)))
    return TreeResult(
        tree_id=tree_id,
        problem=problem,
        actor_id="a",
        policy_version="p0",
        ppm_version="",
        started_at=1.0,
        finished_at=2.0,
        nodes=nodes,
        solved=False,
    )


def _size(frame) -> int:
    return len(frame.data) + sum(len(k) + len(v) + 4 for k, v in frame.headers.items()) + 12


def test_small_tree_is_one_plain_message():
    tree = _tree(5, 50)
    [frame] = encode_tree(tree, MiB)
    assert ENCODING not in frame.headers and frame.headers[MSG_ID] == "tree-1"
    assert frame.data == encode(tree)
    assert decode_tree(frame.headers, frame.data) == tree


def test_medium_tree_is_compressed_into_one_message():
    tree = _tree(200, 200)
    [frame] = encode_tree(tree, MiB, compress_min_bytes=16 * 1024)
    assert frame.headers[ENCODING] == "zlib"
    assert len(frame.data) < len(encode(tree))
    assert decode_tree(frame.headers, frame.data) == tree


def test_multi_megabyte_tree_is_chunked_and_reassembles_in_any_order():
    tree = _tree(1500, 4000, seed=1)  # ~6 MB of node text
    assert len(encode(tree)) > 5 * MiB
    frames = encode_tree(tree, MiB)
    assert len(frames) >= 4
    assert all(_size(f) <= MiB for f in frames)
    assert {f.headers[PARTS] for f in frames} == {str(len(frames))}
    assert len({f.headers[MSG_ID] for f in frames}) == len(frames)  # each part deduplicated on its own
    order = frames[1:] + [frames[1]] + frames[:1]  # shuffled, with a redelivered duplicate part
    asm = Reassembler()
    results = [asm.add(f.headers, f.data, token=n, now=0.0) for n, f in enumerate(order)]
    assert results[:-1] == [None] * (len(order) - 1)
    whole = results[-1]
    assert whole.tree_id == "tree-1" and sorted(whole.tokens) == list(range(len(order)))
    assert decode_tree(whole.headers, whole.payload) == tree
    assert len(asm) == 0


def test_tampered_part_fails_the_digest_and_returns_every_token():
    frames = encode_tree(_tree(600, 4000, seed=2), MiB)
    asm = Reassembler()
    bad = bytearray(frames[0].data)
    bad[10] ^= 0xFF
    asm.add(frames[0].headers, bytes(bad), token="t0", now=0.0)
    with pytest.raises(ChunkError, match="digest") as e:
        for i, f in enumerate(frames[1:], 1):
            asm.add(f.headers, f.data, token=f"t{i}", now=0.0)
    assert sorted(e.value.tokens) == sorted(f"t{i}" for i in range(len(frames)))


def test_incomplete_set_expires_after_ttl_with_its_tokens():
    frames = encode_tree(_tree(600, 4000, seed=3), MiB)
    asm = Reassembler()
    for i, f in enumerate(frames[:-1]):
        assert asm.add(f.headers, f.data, token=i, now=100.0) is None
    assert asm.expired(now=150.0, ttl=60.0) == []
    [(key, tokens, reason)] = asm.expired(now=161.0, ttl=60.0)
    assert key == "tree-1" and tokens == list(range(len(frames) - 1))
    assert f"{len(frames) - 1} of {len(frames)} parts" in reason
    assert len(asm) == 0


def test_a_new_payload_under_the_same_id_supersedes_the_old_set():
    old = encode_tree(_tree(600, 4000, seed=4), MiB)
    new = encode_tree(_tree(600, 4000, seed=5), MiB)
    assert old[0].headers[DIGEST] != new[0].headers[DIGEST]
    asm = Reassembler()
    asm.add(old[0].headers, old[0].data, token="old0", now=0.0)
    results = [asm.add(f.headers, f.data, token=f"new{i}", now=0.0) for i, f in enumerate(new)]
    assert results[-1] is not None
    [(key, tokens, reason)] = asm.expired(now=0.0, ttl=600.0)
    assert tokens == ["old0"] and "superseded" in reason


def test_stale_tokens_are_reported_once_per_interval():
    frames = encode_tree(_tree(600, 4000, seed=6), MiB)
    asm = Reassembler()
    asm.add(frames[0].headers, frames[0].data, token="a", now=0.0)
    assert asm.stale_tokens(now=5.0, every=20.0) == []
    assert asm.stale_tokens(now=21.0, every=20.0) == ["a"]
    assert asm.stale_tokens(now=22.0, every=20.0) == []


@pytest.mark.parametrize(
    "headers",
    [
        {TREE_ID: "t", PART: "x", PARTS: "2", DIGEST: "d"},
        {TREE_ID: "t", PART: "2", PARTS: "2", DIGEST: "d"},
        {TREE_ID: "t", PART: "0", PARTS: "2"},
    ],
)
def test_bad_part_headers_are_a_chunk_error(headers):
    with pytest.raises(ChunkError) as e:
        Reassembler().add(headers, b"x", token="m", now=0.0)
    assert e.value.tokens == ["m"]


def test_garbage_bytes_are_a_schema_error():
    with pytest.raises(SchemaError, match="TreeResult: not valid JSON"):
        decode_tree(None, b"\xff\x00 not json")


def test_unknown_schema_version_is_named():
    raw = msgspec.json.decode(encode(_tree(3, 10)))
    raw["schema"] = 99
    with pytest.raises(SchemaError, match="unknown schema version 99"):
        decode_tree({}, msgspec.json.encode(raw))


def test_corrupt_truncated_and_unknown_encodings_are_codec_errors():
    data = zlib.compress(encode(_tree(50, 100)))
    with pytest.raises(CodecError, match="corrupt zlib"):
        decode_tree({ENCODING: "zlib"}, b"not zlib at all")
    with pytest.raises(CodecError, match="truncated"):
        decode_tree({ENCODING: "zlib"}, data[: len(data) // 2])
    with pytest.raises(CodecError, match="unknown Rstar-Encoding 'zstd'"):
        decode_tree({ENCODING: "zstd"}, data)


def test_decompression_is_capped():
    bomb = zlib.compress(b" " * (8 * MiB))
    with pytest.raises(CodecError, match="more than the limit"):
        decode_tree({ENCODING: "zlib"}, bomb, max_bytes=MiB)


def test_a_payload_limit_too_small_for_headers_is_refused():
    with pytest.raises(ValueError, match="no room"):
        frame_payload(bytes(random.Random(0).randbytes(10_000)), "k" * 400, max_payload=1200)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"[1, 2]", "Expected `object`, got `array`"),
        (b'{"tree_id": 1}', "Expected `str`, got `int` - at `\\$.tree_id`"),
        (b'"just a string"', "Expected `object`, got `str`"),
    ],
)
def test_wrong_shapes_name_the_cause(data, match):
    with pytest.raises(SchemaError, match=match):
        decode_tree(None, data)
