"""Message decoding on hostile bytes: problems, trees (framed, compressed, chunked), model
pointers and heartbeats. Each decodes or raises the documented ``SchemaError`` (``CodecError`` and
``ChunkError`` are ones); a tree that decodes is stored or refused with ``InvalidTreeError``; a
chunk set loses no message: every token comes back exactly once, in a whole, an error or expiry.
"""

from __future__ import annotations

import math
import os

import msgspec
import pytest
from fuzz_strategies import fuzz, json_values, mutated
from hypothesis import assume, given
from hypothesis import strategies as st
from store_helpers import store_engine

from broker.codec import (
    DIGEST,
    ENCODING,
    PART,
    PARTS,
    TREE_ID,
    ChunkError,
    CodecError,
    Reassembler,
    decode_tree,
    encode_tree,
    is_part,
    unwrap,
)
from rstar.schemas import Heartbeat, ModelPointer, ModelRef, Node, Problem, SchemaError, TreeResult, decode, encode
from store.writer import InvalidTreeError, check_tree, upsert_trees

# Text as messages carry it: any character that UTF-8 can hold (no lone surrogates).
text_ = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
names = st.sampled_from(["a", "p0", "tree-1", "synthetic-0123"]) | text_
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([math.nan, math.inf, -math.inf, 1e11])
ints = st.integers(-5, 50) | st.integers(-(2**63), 2**63 - 1)

problems = st.builds(
    Problem,
    id=names,
    source=names,
    question=text_,
    answer=st.none() | text_,
    meta=st.dictionaries(text_, json_values, max_size=3),
    schema=st.just(1) | st.integers(0, 3),
)


@st.composite
def trees(draw) -> TreeResult:
    """A tree whose shape is mostly valid (a root, parents before children) and sometimes not."""
    n = draw(st.integers(0, 8))
    nodes = []
    for i in range(n):
        parent = None if i == 0 else draw(st.integers(0, i - 1))
        depth = 0 if parent is None else nodes[parent].depth + 1
        if draw(st.integers(0, 9)) == 0:  # now and then a broken node
            parent, depth = draw(st.none() | ints), draw(ints)
        nodes.append(
            Node(
                idx=i if draw(st.integers(0, 19)) else draw(ints),
                parent=parent,
                depth=depth,
                text=draw(text_),
                code_output=draw(text_),
                visits=draw(ints),
                q=draw(floats),
                ppm_score=draw(st.none() | floats),
                terminal=draw(st.booleans()),
                correct=draw(st.none() | st.booleans()),
                answer=draw(st.none() | text_),
                policy_version=draw(st.sampled_from(["", "p0"]) | text_),
                ppm_version=draw(st.sampled_from(["", "m0"]) | text_),
                gen_tokens=draw(ints),
            )
        )
    return TreeResult(
        tree_id=draw(names),
        problem=draw(problems),
        actor_id=draw(names),
        policy_version=draw(names),
        ppm_version=draw(st.just("") | names),
        started_at=draw(floats | st.floats(1e9, 2e9)),
        finished_at=draw(floats | st.floats(1e9, 2e9)),
        nodes=nodes,
        solved=draw(st.booleans()),
        best_answer=draw(st.none() | text_),
        round=draw(ints),
        source=draw(st.sampled_from(["search", "teacher"]) | text_),
        rollouts=draw(ints),
        schema=draw(st.just(1) | st.integers(0, 3)),
    )


refs = st.builds(ModelRef, version=names, object=names, sha256=st.text("0123456789abcdef", max_size=64))
pointers = st.builds(ModelPointer, round=ints, policy=refs, ppm=st.none() | refs, schema=st.just(1) | st.integers(0, 3))
heartbeats = st.builds(
    Heartbeat,
    actor_id=names,
    host=names,
    backend=names,
    policy_version=names,
    ppm_version=names,
    trees_per_min=floats,
    tokens_per_s=floats,
    busy_fraction=floats,
    trees_in_flight=ints,
    at=floats,
    schema=st.just(1) | st.integers(0, 3),
)
MESSAGES = {Problem: problems, TreeResult: trees(), ModelPointer: pointers, Heartbeat: heartbeats}
any_message = st.sampled_from(list(MESSAGES)).flatmap(lambda t: st.tuples(st.just(t), MESSAGES[t]))


def _finite(msg) -> bool:
    """No NaN or infinity anywhere: JSON has none (msgspec writes them as null)."""
    return all(math.isfinite(v) for v in _leaves(msgspec.to_builtins(msg)) if isinstance(v, float))


def _leaves(x):
    if isinstance(x, dict | list):
        for v in x.values() if isinstance(x, dict) else x:
            yield from _leaves(v)
    else:
        yield x


@fuzz(300)
@given(any_message)
def test_a_message_round_trips_or_is_refused_as_a_schema_error(typed):
    type_, msg = typed
    data = encode(msg)
    try:
        back = decode(data, type_)
    except SchemaError:
        assert msg.schema != 1 or not _finite(msg), "a valid message was refused"
        return
    assert msg.schema == 1
    if _finite(msg):
        assert back == msg
    else:  # JSON has no NaN: msgspec wrote null, which an optional float reads back as None
        assert encode(back) == data


def _encodings(type_):
    return MESSAGES[type_].map(encode)


hostile_bytes = st.binary(max_size=300) | json_values.map(msgspec.json.encode)


@fuzz(400)
@given(st.sampled_from(list(MESSAGES)).flatmap(lambda t: st.tuples(st.just(t), hostile_bytes | mutated(_encodings(t)))))
def test_any_bytes_decode_or_raise_a_schema_error(typed):
    type_, data = typed
    try:
        assert isinstance(decode(data, type_), type_)
    except SchemaError:
        pass


header_values = st.sampled_from(["0", "1", "2", "-1", "999999", "1_0", "٣", "zlib", "gzip", "", "x" * 64]) | text_
hostile_headers = st.none() | st.dictionaries(
    st.sampled_from([ENCODING, TREE_ID, PART, PARTS, DIGEST, "Nats-Msg-Id"]) | text_, header_values, max_size=5
)


@fuzz(300)
@given(
    hostile_headers,
    hostile_bytes | mutated(trees().map(encode)) | mutated(trees().map(lambda t: encode_tree(t, 4096, 64)[0].data)),
)
def test_a_tree_message_decodes_or_raises_a_schema_error(headers, data):
    try:
        payload = unwrap(headers, data, 1 << 20)
    except CodecError:
        return
    assert isinstance(payload, bytes) and len(payload) <= 1 << 20
    try:
        assert isinstance(decode_tree(headers, data, 1 << 20), TreeResult)
    except SchemaError:
        pass


@fuzz(200)
@given(trees(), st.sampled_from([0, 64, 1 << 20]), st.binary(min_size=1, max_size=8))
def test_bytes_after_a_compressed_payload_are_refused(tree, compress_min, tail):
    [frame] = encode_tree(tree, 1 << 24, compress_min)
    if ENCODING not in frame.headers:
        return
    assert unwrap(frame.headers, frame.data, 1 << 24) == encode(tree)
    with pytest.raises(CodecError):
        unwrap(frame.headers, frame.data + tail, 1 << 24)


@fuzz(150)
@given(
    st.lists(trees(), min_size=1, max_size=3),
    st.integers(2048, 4000),  # room for a part's headers and 1 KiB of data
    st.randoms(use_true_random=False),
    st.lists(st.tuples(hostile_headers.filter(bool), st.binary(max_size=40)), max_size=4),
)
def test_chunk_sets_lose_no_message(tree_list, max_payload, rng, junk):
    """Parts of several trees, shuffled, some redelivered, mixed with junk parts: each tree whose
    parts all came is assembled once and equals the tree sent; every token comes back exactly once."""
    sent = {
        f"t{i}": msgspec.structs.replace(
            t, tree_id=f"t{i}", nodes=[*t.nodes, Node(idx=10**6, parent=0, depth=1, text=rng.randbytes(3000).hex())]
        )
        for i, t in enumerate(tree_list)
    }
    messages: list[tuple[dict, bytes]] = []
    for t in sent.values():
        messages += [(f.headers, f.data) for f in encode_tree(t, max_payload, 1 << 30)]  # chunked, not compressed
    messages += rng.sample(messages, k=min(3, len(messages)))  # redeliveries
    messages += [(dict(h), d) for h, d in junk]
    rng.shuffle(messages)
    asm = Reassembler(max_bytes=1 << 22)
    seen: list[int] = []
    for token, (headers, data) in enumerate(messages):
        if not is_part(headers):
            seen.append(token)
            continue
        try:
            whole = asm.add(headers, data, token, now=float(token))
        except ChunkError as e:
            seen += e.tokens
            continue
        if whole is not None:
            seen += whole.tokens
            if whole.tree_id in sent and _finite(sent[whole.tree_id]) and sent[whole.tree_id].schema == 1:
                assert decode_tree(whole.headers, whole.payload) == sent[whole.tree_id]
    for _, tokens, _reason in asm.expired(now=1e9, ttl=0):
        seen += tokens
    assert sorted(seen) == list(range(len(messages))) and len(asm) == 0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    with store_engine(request.param, tmp_path_factory.mktemp("fuzz"), "fuzz_trees") as eng:
        yield eng


@fuzz(60)
@given(trees())
def test_a_decoded_tree_is_stored_or_refused_the_same_way_on_both_backends(engine, tree):
    """What ``check_tree`` passes, SQLite and PostgreSQL both store; what they cannot store is an
    ``InvalidTreeError`` before anything is written, never a database error."""
    try:
        tree = decode(encode(tree), TreeResult)
    except SchemaError:
        assume(False)
    tree = msgspec.structs.replace(
        tree, tree_id=f"{tree.tree_id[:90]}-{os.urandom(8).hex()}"
    )  # hypothesis seeds random
    try:
        check_tree(tree)
    except InvalidTreeError:
        with pytest.raises(InvalidTreeError):
            upsert_trees(engine, [tree])
        return
    assert upsert_trees(engine, [tree]) == 1 and upsert_trees(engine, [tree]) == 0
