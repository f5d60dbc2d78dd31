"""``rstar grade``: are two answers equivalent? One pair on the command line, or a JSONL file of pairs.

    rstar grade '\\frac{1}{2}' 0.5            # -> equivalent (numeric); exit code 0 either way
    rstar grade --json -- -3 '−3'            # "--" lets an answer start with "-"
    rstar grade --file pairs.jsonl --out verdicts.jsonl
    rstar grade --file tests/unit/grading_cases.jsonl --out verdicts.jsonl   # agreement with the spec

File mode: each input line ``{"pred": str|number|null, "gold": str|number}`` gives exactly one
output line, the ``Verdict`` as JSON, in input order (so output line i answers input line i). A
malformed input line (bad JSON, missing gold, blank) is not skipped: it gets a verdict with
``method="malformed"`` and an ``error`` naming the line, is reported on stderr, and grading goes on;
the exit code is then 1. ``--out`` is written to a temp file and renamed when complete.

Lines may also carry the expected verdict, ``"equivalent": bool``, and a ``"category"`` (the
case table ``tests/unit/grading_cases.jsonl`` does). Then stderr also gets the agreement, overall
with its false positives and negatives and per category, and lists each disagreement; any
disagreement makes the exit code 1.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import msgspec
import typer

CHUNK = 256  # pairs graded concurrently (math-verify runs in a small process pool)


class _Pair(msgspec.Struct):
    gold: str | int | float
    pred: str | int | float | None = None
    equivalent: bool | None = None  # the expected verdict, if the line states it
    category: str = ""


class _Agreement:
    """Verdicts against the ``equivalent`` the lines expect, by category."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # category -> [agree, total]
        self.misses: list[str] = []
        self.false_pos = self.false_neg = 0

    def add(self, no: int, pair: _Pair, v) -> None:
        agree = v.equivalent == pair.equivalent
        counts = self.counts[pair.category or "-"]
        counts[0] += agree
        counts[1] += 1
        if not agree:
            self.false_pos += v.equivalent
            self.false_neg += not v.equivalent
            expected = "equivalent" if pair.equivalent else "not equivalent"
            self.misses.append(
                f"line {no} [{pair.category or '-'}]: pred {v.pred!r} gold {v.gold!r}: expected "
                f"{expected}, got {'equivalent' if v.equivalent else 'not equivalent'} ({v.method})"
            )

    def report(self, console) -> None:
        agree, total = (sum(c[i] for c in self.counts.values()) for i in (0, 1))
        console.print(
            f"agreement: {agree}/{total} ({100 * agree / total:.1f}%), "
            f"{self.false_pos} false positives, {self.false_neg} false negatives",
            highlight=False,
        )
        width = max(map(len, self.counts))
        for category, (a, t) in sorted(self.counts.items()):
            console.print(f"  {category:<{width}}  {a}/{t}", highlight=False)
        for miss in self.misses:
            console.print(f"disagree {miss}", markup=False, highlight=False, soft_wrap=True)


def _read_pair(line: str, no: int):
    """The ``_Pair`` of one JSONL line, or a malformed Verdict naming the line."""
    from rstar.grading import Verdict

    try:
        pair = msgspec.json.decode(line, type=_Pair) if line.strip() else None
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return Verdict(False, "malformed", None, "", f"line {no}: {e}")
    if pair is None:
        return Verdict(False, "malformed", None, "", f"line {no}: blank line")
    # Numbers written as JSON numbers are graded as the text they print as.
    pair.pred = pair.pred if pair.pred is None or isinstance(pair.pred, str) else repr(pair.pred)
    pair.gold = pair.gold if isinstance(pair.gold, str) else repr(pair.gold)
    return pair


def _grade_file(path: Path, out: Path | None, timeout_s: float) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.progress import Progress

    from rstar import mathverify_worker
    from rstar.grading import Verdict, verify

    try:
        # Lines end at "\n" only: splitlines() also cuts at U+2028 and U+0085, which JSON strings hold.
        text = path.read_text(encoding="utf-8")
        lines = text.removesuffix("\n").split("\n") if text else []
    except (OSError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"cannot read {path}: {e}", param_hint="--file") from None
    tmp = out.with_name(f".{out.name}.tmp") if out else None
    sink = open(tmp, "wb") if tmp else sys.stdout.buffer
    stderr = Console(stderr=True)
    bad = equivalent = 0
    agreement = _Agreement()
    try:
        with (
            ThreadPoolExecutor(mathverify_worker.MAX_WORKERS) as pool,
            Progress(console=stderr, disable=not stderr.is_terminal) as progress,
        ):
            task = progress.add_task(f"grading {path.name}", total=len(lines))
            for start in range(0, len(lines), CHUNK):
                items = [_read_pair(ln, no) for no, ln in enumerate(lines[start : start + CHUNK], start + 1)]
                verdicts = pool.map(
                    lambda it: it if isinstance(it, Verdict) else verify(it.pred, it.gold, timeout_s), items
                )
                for no, (item, v) in enumerate(zip(items, verdicts), start + 1):
                    if isinstance(item, Verdict):  # the line itself was malformed
                        bad += 1
                        stderr.print(f"[red]error[/red] {path}: {v.error}", markup=True, highlight=False)
                    elif item.equivalent is not None:
                        agreement.add(no, item, v)
                    equivalent += v.equivalent
                    sink.write(msgspec.json.encode(v) + b"\n")
                sink.flush()
                progress.advance(task, len(items))
    except BaseException:
        if tmp:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    if tmp:
        assert out is not None  # tmp is made only for an out file
        sink.close()
        os.replace(tmp, out)
    stderr.print(
        f"{len(lines)} pairs: {equivalent} equivalent, {bad} malformed lines" + (f"; verdicts in {out}" if out else "")
    )
    if agreement.counts:
        agreement.report(stderr)
    return 1 if bad or agreement.misses else 0


def grade(
    pred: str = typer.Argument(None, help="Predicted answer (text, LaTeX, or a number)."),
    gold: str = typer.Argument(None, help="Reference answer."),
    file: Path = typer.Option(None, "--file", "-f", help='JSONL of {"pred": ..., "gold": ...} lines.'),
    out: Path = typer.Option(None, "--out", "-o", help="With --file: write verdicts here, not stdout."),
    as_json: bool = typer.Option(False, "--json", help="Print the Verdict as JSON."),
    timeout_s: float = typer.Option(2.0, "--timeout", min=0.1, help="Seconds math-verify may take per pair."),
) -> None:
    """Say whether PRED and GOLD are the same answer, and which method decided."""
    from rstar.grading import verify

    if file is not None:
        if pred is not None or gold is not None:
            raise typer.BadParameter("give either PRED GOLD or --file, not both")
        raise typer.Exit(_grade_file(file, out, timeout_s))
    if pred is None or gold is None:
        raise typer.BadParameter("give PRED and GOLD, or --file PAIRS.jsonl")
    if out is not None:
        raise typer.BadParameter("--out goes with --file", param_hint="--out")
    v = verify(pred, gold, timeout_s)
    if as_json:
        typer.echo(msgspec.json.encode(v).decode())
    else:
        typer.echo(
            f"{'equivalent' if v.equivalent else 'not equivalent'} ({v.method})" + (f": {v.error}" if v.error else "")
        )


def register(app: typer.Typer) -> None:
    app.command("grade")(grade)
