"""The bootstrap teachers with the real sandbox: curriculum solutions verified step by step, and an
OpenAI-compatible endpoint (a local HTTP server answering with the reference steps, or a wrong
guess) driven through the actors' MCTS code. Stored once, resumable, marked as teacher trees."""

from __future__ import annotations

import socket

import msgspec
import pytest
from aiohttp import web

from learner.bootstrap import run_bootstrap, teacher_problems, verify_reference
from learner.data import select_round
from rstar.config import load_config
from rstar.curriculum import synthetic_problems
from rstar.steps import parse_steps
from store.db import open_store
from store.queries import get_tree, list_trees

pytestmark = pytest.mark.timeout(120)
WRONG = "# A guess.\nanswer = 0\n"


@pytest.fixture
def engine(tmp_path):
    e = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield e
    e.dispose()


def base_cfg(tmp_path, *extra: str):
    return load_config(
        overrides=[
            f'data_dir="{tmp_path}"',
            "learner.teacher_problems=4",
            "learner.teacher_levels=[1, 2]",
            "sandbox.workers=1",
            *extra,
        ],
        env={},
    )


async def test_curriculum_teacher_stores_verified_linear_trees_once(tmp_path, engine):
    cfg = base_cfg(tmp_path)
    rep = await run_bootstrap(cfg, engine)
    assert (rep.problems, rep.stored, rep.already, rep.failed) == (4, 4, 0, 0)
    rows, total = list_trees(engine, round_no=0, source="teacher")
    assert total == 4 and all(r["solved"] and r["id"].startswith("teacher-") for r in rows)
    p = teacher_problems(cfg)[0]
    tree, nodes = get_tree(engine, f"teacher-{p.id}")
    steps = [n["text"] for n in nodes[1:]]
    assert parse_steps("".join(s + "<end_of_step>\n" for s in steps)) == steps
    assert [n["q"] for n in nodes] == [1.0] * len(nodes) and nodes[-1]["correct"] and nodes[-1]["answer"] == p.answer
    again = await run_bootstrap(cfg, engine)
    assert (again.stored, again.already) == (0, 4)


async def test_a_reference_that_does_not_verify_is_refused(tmp_path):
    from actors.sandbox import SandboxPool

    p = synthetic_problems(1, levels=(1,))[0]
    async with SandboxPool(base_cfg(tmp_path).sandbox) as sandbox:
        assert (await verify_reference(p, sandbox)) is not None
        assert await verify_reference(msgspec.structs.replace(p, answer="-12345"), sandbox) is None
        broken = msgspec.structs.replace(p, meta={**p.meta, "reference_steps": ["x = 1 / 0\n", "answer = x\n"]})
        assert await verify_reference(broken, sandbox) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def teacher_server():
    """``/v1/completions`` that continues a problem's reference solution (even choices) or guesses."""
    refs = {p.question: p.meta["reference_steps"] for p in synthetic_problems(20, levels=(1, 2))}

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["prompt"]
        head, _, done = prompt.rpartition("\nSolution:\n")
        question = head.rpartition("Problem: ")[2]
        ref = refs[question]
        nxt = ref[len(parse_steps(done))]
        choices = [
            {"index": i, "text": nxt if i % 2 == 0 else WRONG, "finish_reason": "stop", "stop_reason": "<end_of_step>"}
            for i in range(body["n"])
        ]
        return web.json_response({"choices": choices, "usage": {"completion_tokens": 20 * body["n"]}})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_openai_teacher_searches_through_the_endpoint(tmp_path, engine, teacher_server):
    cfg = base_cfg(
        tmp_path,
        'learner.teacher="openai"',
        f'model.openai_url="{teacher_server}"',
        'model.openai_model="big-teacher"',
        "learner.teacher_rollouts=4",
        "search.n_children=2",
        "learner.teacher_problems=3",
    )
    rep = await run_bootstrap(cfg, engine)
    assert (rep.problems, rep.stored, rep.failed) == (3, 3, 0)
    rows, _ = list_trees(engine, round_no=0, source="teacher")
    assert {r["policy_version"] for r in rows} == {"teacher:big-teacher"} and all(r["solved"] for r in rows)
    # The guesses are wrong branches beside the correct path: the teacher's trees also give PPM pairs.
    sel = select_round(engine, 0, cfg.train)
    assert len(sel.sft) == 3 and sel.pairs
    assert (await run_bootstrap(cfg, engine)).already == 3


async def test_openai_teacher_without_a_model_name_is_a_clear_error(tmp_path, engine):
    from learner.bootstrap import BootstrapError

    with pytest.raises(BootstrapError, match="openai_model"):
        await run_bootstrap(base_cfg(tmp_path, 'learner.teacher="openai"'), engine)
