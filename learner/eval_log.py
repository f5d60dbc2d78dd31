"""An evaluation's outcomes on disk, one JSON line per problem as it finishes, so a long
``rstar eval --out FILE.jsonl`` resumes after a stop instead of starting over.

    {"run": {"dataset": "gsm8k", "method": "mcts", "k": 8, ...}}        first line: what decides answers
    {"problem_id": "…", "answer": "18", "gold": "18", "correct": true, "segment": 0, "wall_s": 41.2, "gen_tokens": 5120}
    …

Running the same command again skips the problems already in the file; a different run (another
method, k, model, generation or search setting) is refused rather than mixed into it. Totals cover
every segment (one per invocation): ``seconds`` adds each segment's wall time up to its last
finished problem (work cut off by a stop is not counted), ``gen_tokens`` likewise. A line torn by a
kill mid-write is dropped with a warning; any other malformed line is an error naming its number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from learner.evaluate import EvalResult, ProblemOutcome, eval_result
from rstar.config import Config
from rstar.log import get_logger

log = get_logger(__name__)


class EvalLogError(ValueError):
    """The file cannot be resumed: another run's outcomes, or a malformed line."""


class _Line(ProblemOutcome):
    segment: int = 0
    wall_s: float = 0.0
    gen_tokens: int = 0


def run_key(cfg: Config, dataset: str, split: str | None, method: str, k: int) -> dict[str, Any]:
    """What decides the answers of a run (not its speed: threads, batch sizes, trees in flight)."""
    s = cfg.search
    return {
        "dataset": dataset,
        "split": split,
        "method": method,
        "k": 1 if method == "greedy" else k,
        "policy": cfg.model.policy,
        "ppm": cfg.model.ppm,
        "seed": s.seed,
        "generation": cfg.generation.model_dump(),
        "search": {"c_uct": s.c_uct, "n_children": s.n_children, "max_depth": s.max_depth, "ppm_init": s.ppm_init},
    }


class EvalLog:
    """Open ``path`` for ``run``: the outcomes already there, and an appender for new ones."""

    def __init__(self, path: str | Path, run: dict[str, Any]):
        self.path = Path(path)
        self.done: dict[str, _Line] = {}
        self.segment = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read(run)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(msgspec.json.encode({"run": run}) + b"\n")

    def _read(self, run: dict[str, Any]) -> None:
        lines = self.path.read_bytes().split(b"\n")
        try:
            had = msgspec.json.decode(lines[0]).get("run")
        except (msgspec.DecodeError, AttributeError):
            had = None
        if had is None:
            raise EvalLogError(f"{self.path}:1: not an rstar eval log (no run header); use another --out")
        if had != run:
            diff = sorted(key for key in run.keys() | had.keys() if run.get(key) != had.get(key))
            raise EvalLogError(
                f"{self.path} holds another run (differs in {', '.join(diff)}); "
                "use another --out, or delete the file to start over"
            )
        body = lines[1:]
        last = max((i for i, raw in enumerate(body) if raw.strip()), default=-1)
        for i, raw in enumerate(body):
            if not raw.strip():
                continue
            try:
                line = msgspec.json.decode(raw, type=_Line)
            except msgspec.DecodeError as e:
                if i == last and not raw.endswith(b"}"):
                    log.warning(f"{self.path}:{i + 2}: dropping a line cut off by a stop")
                    self._truncate_after(lines, i)
                    break
                raise EvalLogError(f"{self.path}:{i + 2}: {e}") from None
            self.done[line.problem_id] = line
            self.segment = max(self.segment, line.segment + 1)

    def _truncate_after(self, lines: list[bytes], body_index: int) -> None:
        keep = b"\n".join(lines[: body_index + 1]) + b"\n"
        self.path.write_bytes(keep)

    def record(self, outcome: ProblemOutcome, wall_s: float, gen_tokens: int) -> None:
        line = _Line(
            **msgspec.structs.asdict(outcome), segment=self.segment, wall_s=round(wall_s, 2), gen_tokens=gen_tokens
        )
        self.done[line.problem_id] = line
        with self.path.open("ab") as f:
            f.write(msgspec.json.encode(line) + b"\n")

    def result(self, problem_ids: list[str], dataset: str, method: str, k: int) -> EvalResult:
        """Totals over the outcomes of ``problem_ids`` (those in the file for this run)."""
        lines = [self.done[i] for i in problem_ids if i in self.done]
        per_segment: dict[int, tuple[float, int]] = {}
        for line in self.done.values():
            wall, tokens = per_segment.get(line.segment, (0.0, 0))
            per_segment[line.segment] = (max(wall, line.wall_s), max(tokens, line.gen_tokens))
        outcomes = [
            ProblemOutcome(problem_id=x.problem_id, answer=x.answer, gold=x.gold, correct=x.correct) for x in lines
        ]
        seconds = sum(w for w, _ in per_segment.values())
        return eval_result(dataset, method, k, outcomes, seconds, sum(t for _, t in per_segment.values()))
