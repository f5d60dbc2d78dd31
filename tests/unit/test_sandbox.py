"""The sandbox pool: step semantics, answer formatting, the ancestor cache, concurrency.

Real worker processes (strict isolation, which needs root with CAP_SYS_ADMIN); the escape suite
lives in tests/integration/test_sandbox_escape.py.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import pytest_asyncio
from sandbox_helpers import start_pool

from actors.sandbox import ExecResult, SandboxError, SandboxPool, run_sync
from rstar.config import SandboxConfig
from rstar.steps import StepFormatError

pytestmark = pytest.mark.asyncio(loop_scope="module")
# snapshot_min_ms=0: cache every faithful prefix, however cheap, so the tests exercise it
CFG = SandboxConfig(workers=2, timeout_s=3.0, cpu_s=3, grace_s=5.0, snapshot_min_ms=0.0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool():
    pool = await start_pool(CFG)
    yield pool
    await pool.close()


def same(a: ExecResult, b: ExecResult) -> bool:
    return msgspec.structs.replace(a, duration_s=0.0) == msgspec.structs.replace(b, duration_s=0.0)


async def test_stdout_is_the_last_steps_only(pool):
    r = await pool.run(["print('one')\nx = 1\n", "print('two')\nx += 1\n", "print('three', x)\n"])
    assert r.ok and r.stdout == "three 2\n" and r.error is None and r.error_kind is None
    assert r.answer is None  # nothing bound `answer`


async def test_answer_is_the_formatted_global(pool):
    r = await pool.run(["# boxes\nboxes = 3\ntotal = boxes * 12\n", "answer = total - 5\n"])
    assert r.ok and r.answer == "31" and r.duration_s > 0


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("12", "12"),
        ("12.0", "12"),
        ("-0.0", "0"),
        ("1 / 3", "0.3333333333"),
        ("0.1 + 0.2", "0.3"),
        ("2.5e-12", "2.5e-12"),
        ("float('inf')", "inf"),
        ("Fraction(6, 8)", "3/4"),
        ("Fraction(4, 2)", "2"),
        ("True", "True"),
        ("'7 apples'", "7 apples"),
        ("sympy.Rational(3, 4)", "3/4"),
        ("sympy.sqrt(8)", "2*sqrt(2)"),
        ("numpy.int64(12)", "12"),
        ("numpy.float64(12.0)", "12"),
        ("[1, 2]", "[1, 2]"),
    ],
)
async def test_answer_formatting(pool, expr, expected):
    r = await pool.run(["from fractions import Fraction\nimport sympy\nimport numpy\n", f"answer = {expr}\n"])
    assert r.ok, r.error
    assert r.answer == expected


async def test_name_error_in_a_later_step(pool):
    r = await pool.run(["x = 2\nprint('ancestor')\n", "print('before')\ny = x + z\n"])
    assert not r.ok and r.error_kind == "exception"
    assert r.error == "NameError: name 'z' is not defined"
    assert r.stdout == "before\n"  # what the failing step printed before it failed


async def test_failure_in_an_ancestor_names_the_step(pool):
    r = await pool.run(["x = 1\n", "x = 1 / 0\n", "answer = x\n"])
    assert not r.ok and r.error_kind == "exception" and r.stdout == ""
    assert r.error == "earlier step 2 failed: ZeroDivisionError: division by zero"


async def test_each_step_compiles_on_its_own(pool):
    r = await pool.run(["for i in range(3):\n", "    total = i\n"])
    assert not r.ok and r.error_kind == "exception" and r.error.startswith("earlier step 1 failed")
    assert "SyntaxError" in r.error or "IndentationError" in r.error


async def test_stderr_is_captured_apart(pool):
    r = await pool.run(["import sys\nprint('warn', file=sys.stderr)\nprint('out')\n"])
    assert r.ok and r.stdout == "out\n" and r.stderr == "warn\n"


async def test_steps_are_normalized_like_program(pool):
    r = await pool.run(["```python\nx = 5\n```\n<end_of_step>\n", "answer = x\n<end_of_step>"])
    assert r.ok and r.answer == "5"


async def test_bad_input_raises(pool):
    with pytest.raises(ValueError):
        await pool.run([])
    with pytest.raises(StepFormatError):
        await pool.run(["x = 1\n", "  \n"])


async def test_calls_do_not_share_state(pool):
    poisoned = await pool.run(["import math\nmath.pi = 3\nanswer = math.pi\n"])
    clean = await pool.run(["import math\nanswer = round(math.pi, 2)\n"])
    assert poisoned.answer == "3" and clean.answer == "3.14"
    leaked = await pool.run(["answer = x\n"])  # nothing of an earlier call's namespace survives
    assert leaked.error == "NameError: name 'x' is not defined"


async def test_concurrent_runs_are_spread_over_the_workers(pool):
    results = await asyncio.gather(*(pool.run([f"x = {i}\n", "answer = x * x\n"]) for i in range(40)))
    assert [r.answer for r in results] == [str(i * i) for i in range(40)]
    t0 = time.perf_counter()
    slept = await asyncio.gather(*(pool.run(["import time\ntime.sleep(0.6)\n"]) for _ in range(4)))
    took = time.perf_counter() - t0
    assert all(r.ok for r in slept)
    assert 1.2 <= took < 2.3  # 4 sleeps on 2 workers: two rounds, not one, not four


async def test_a_cancelled_call_costs_its_worker_not_the_pool(pool):
    restarts = pool.gauges()["sandbox/worker_restarts"]
    task = asyncio.create_task(pool.run(["import time\ntime.sleep(30)\n"]))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the abandoned worker's late reply must not reach anyone: it is replaced
    assert pool.gauges()["sandbox/worker_restarts"] == restarts + 1
    results = await asyncio.gather(*(pool.run([f"answer = {i}\n"]) for i in range(6)))
    assert [r.answer for r in results] == [str(i) for i in range(6)]


async def test_output_that_is_not_utf8_is_escaped(pool):
    r = await pool.run(["print('a\\ud800b')\n"])
    assert r.ok and r.stdout == "a\\ud800b\n"
    bad = await pool.run(["x = '\ud800'\n"])
    assert bad.error_kind == "exception" and bad.error.startswith("SyntaxError")


async def test_closed_pool_refuses():
    pool = await start_pool(CFG.model_copy(update={"workers": 1}))
    await pool.close()
    with pytest.raises(SandboxError):
        await pool.run(["answer = 1\n"])


async def test_close_lets_the_call_in_flight_finish_and_fails_the_waiting_ones():
    one = await start_pool(CFG.model_copy(update={"workers": 1}))
    calls = [asyncio.create_task(one.run(["import time\ntime.sleep(0.4)\nanswer = 1\n"])) for _ in range(3)]
    await asyncio.sleep(0.1)
    await one.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0].answer == "1"
    assert all(isinstance(r, SandboxError) for r in results[1:])


async def test_run_sync():
    # run_sync starts its own event loop: call it from a thread, as a script's main would
    r = await asyncio.to_thread(run_sync, ["x = 20\n", "answer = x + 22\n"], CFG)
    assert r.ok and r.answer == "42"


# -- the ancestor cache ------------------------------------------------------------------------

# Trajectories that exercise what a snapshot must carry or refuse: plain data, Fractions, sympy,
# numpy, functions, module state, random state, files, environment, stdout of each step, failures.
TREES = [  # (steps, whether the state after each step can be snapshotted)
    (
        ["x = 3\nprint('a', x)\n", "y = x * 4\nprint('b', y)\n", "z = [y, y + 1]\n", "answer = sum(z)\nprint('c')\n"],
        True,
    ),
    (["from fractions import Fraction\nq = Fraction(1, 3)\n", "q += Fraction(1, 6)\n", "answer = q\n"], True),
    (["import math\ng = math.gcd\n", "h = g(12, 18)\n", "answer = h\n"], True),
    (["total = 10\n", "total -= 4\nprint(total)\n", "answer = total\n"], True),
    (["def f(v):\n    return 2 * v\n", "w = f(10)\n", "answer = f(w) + 2\n"], False),
    (["import math\nmath.pi = 3\n", "r = 2\n", "answer = math.pi * r\n"], False),
    (
        [
            "import random\nrandom.seed(7)\nfirst = random.random()\n",
            "second = random.random()\n",
            "answer = round(second, 6)\n",
        ],
        False,
    ),
    (["open('note.txt', 'w').write('41')\n", "n = int(open('note.txt').read())\n", "answer = n + 1\n"], False),
    (["import os\nos.environ['K'] = '5'\n", "k = int(os.environ['K'])\n", "answer = k\n"], False),
    (["import re\npat = 'a+'\n", "m = len(pat)\n", "answer = m\n"], False),
    (["big = list(range(50000))\n", "m = max(big)\n", "answer = m\n"], False),  # > snapshot_kb
    (
        [
            "from fractions import Fraction\nFraction.extra = 5\n",
            "q = Fraction(1, 2)\n",
            "answer = Fraction.extra + q\n",
        ],
        False,
    ),
    (["import numpy as np\nnp.set_printoptions(precision=2)\n", "a = np.array([1 / 3])\n", "answer = str(a)\n"], False),
    # last: once a worker has loaded sympy and numpy, every fork costs more
    (["import sympy\nx = sympy.Symbol('x')\n", "roots = sympy.solve(x**2 - 9, x)\n", "answer = max(roots)\n"], True),
    (["import numpy as np\na = np.arange(5)\n", "s = a.sum()\n", "answer = s * 2\n"], True),
    (["x = 1\n", "y = x / 0\n", "answer = 3\n"], None),
    (["x = 1\n", "print('oops'\n", "answer = 3\n"], None),
]


async def replay(pool: SandboxPool) -> tuple[list[ExecResult], list[int]]:
    """Every node of every tree, parents first, then a sibling leaf per node (as MCTS does).

    Returns the results and, per tree, how many steps the workers executed.
    """
    out, executed = [], []
    for steps, _ in TREES:
        before = pool.gauges()["sandbox/steps_run"]
        for depth in range(1, len(steps) + 1):
            out.append(await pool.run(steps[:depth]))
            out.append(await pool.run(steps[: depth - 1] + ["print('sibling')\n"]))
        out.append(await pool.run(steps))  # an exact repeat
        executed.append(pool.gauges()["sandbox/steps_run"] - before)
    return out, executed


async def test_cache_gives_the_same_results_as_rerunning_everything():
    cached = await start_pool(CFG.model_copy(update={"workers": 1}))
    uncached = await start_pool(CFG.model_copy(update={"workers": 1, "cache_entries": 0}))
    try:
        (a, steps_a), (b, steps_b) = await asyncio.gather(replay(cached), replay(uncached))
    finally:
        await cached.close()
        await uncached.close()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert same(x, y), (x, y)
    answers = {r.answer for r in a if r.ok}
    assert {"25", "1/2", "3", "20", "42", "6", "5", "11/2", "[0.33]"} <= answers
    for (steps, cacheable), ran_cached, ran_full in zip(TREES, steps_a, steps_b):
        d = len(steps)
        if cacheable is not None:  # uncached, every call re-ran all its ancestors
            assert ran_full == d * d + 2 * d
        if cacheable:  # cached, each call ran only its new step
            assert ran_cached == 2 * d + 1, steps
        elif cacheable is False:  # state a snapshot cannot carry: re-run, never a wrong shortcut
            assert ran_cached == ran_full, steps


async def test_cache_runs_each_step_of_a_deep_chain_once():
    cached = await start_pool(CFG.model_copy(update={"workers": 2}))
    chain = [f"v{i} = {i}\n" if i == 0 else f"v{i} = v{i - 1} + {i}\n" for i in range(12)]
    try:
        for depth in range(1, len(chain) + 1):
            r = await cached.run(chain[:depth] + [f"answer = v{depth - 1}\n"])
            assert r.answer == str(sum(range(depth)))
        gauges = cached.gauges()
    finally:
        await cached.close()
    # depth d runs 2 steps (the new node and its leaf) instead of d + 1: 24 rather than 90
    assert gauges["sandbox/steps_run"] == 2 * len(chain)


async def test_only_prefixes_dearer_than_a_snapshot_are_cached():
    pool = await start_pool(CFG.model_copy(update={"workers": 1, "snapshot_min_ms": 5.0}))
    try:
        cheap = ["a = 2\n", "b = a + 1\n"]
        for depth in (1, 2):
            await pool.run(cheap[:depth] + ["answer = a\n"])
        assert pool.gauges()["sandbox/cache_hits"] == 0  # re-running these beats unpickling
        dear = ["total = sum(i * i for i in range(600000))\n", "half = total // 2\n"]
        first = await pool.run(dear + ["answer = half\n"])
        second = await pool.run(dear + ["answer = half + 1\n"])
        assert pool.gauges()["sandbox/cache_hits"] == 1
        assert int(second.answer) == int(first.answer) + 1
    finally:
        await pool.close()


async def test_failing_prefix_is_answered_from_the_cache(pool):
    first = await pool.run(["x = 1\n", "undefined_name\n"])
    before = pool.gauges()["sandbox/steps_run"]
    again = await pool.run(["x = 1\n", "undefined_name\n", "answer = 1\n"])
    assert pool.gauges()["sandbox/steps_run"] == before  # nothing executed
    assert first.error == "NameError: name 'undefined_name' is not defined"
    assert again.error == "earlier step 2 failed: " + first.error
    assert again.error_kind == "exception" and again.duration_s == 0.0


async def test_cache_is_bounded():
    small = await start_pool(CFG.model_copy(update={"workers": 1, "cache_entries": 3}))
    try:
        for i in range(6):
            await small.run([f"x = {i}\n", "answer = x\n"])
        assert small.gauges()["sandbox/cache_entries"] == 3
    finally:
        await small.close()


async def test_a_failing_ancestor_is_cached_for_the_ancestors_program(pool):
    # steps before the last run as a first stage: their failure is filed under their own program
    first = await pool.run(["x = 2\n", "x = x / 0\n", "answer = x\n"])
    before = pool.gauges()["sandbox/steps_run"]
    again = await pool.run(["x = 2\n", "x = x / 0\n", "print('other leaf')\n"])
    assert pool.gauges()["sandbox/steps_run"] == before  # nothing executed
    assert first.error == again.error == "earlier step 2 failed: ZeroDivisionError: division by zero"
