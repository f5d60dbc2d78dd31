"""One typed configuration for every rstar process.

Sources, later wins: defaults below < a TOML file (``--config``, or ``$RSTAR_CONFIG``) <
environment variables ``RSTAR_<SECTION>__<FIELD>`` (e.g. ``RSTAR_SEARCH__ROLLOUTS=16``) <
CLI overrides ``--set section.field=value``. Values from env and ``--set`` are parsed as TOML
values when they parse (``16``, ``true``, ``[1, 2]``) and taken as strings otherwise; a text
field keeps what was written (``RSTAR_API__TOKEN=123456`` is the string ``"123456"``). An
environment name with ``__`` must start with a section (``RSTAR_SERACH__ROLLOUTS`` is an error,
as a misspelled field is). ``rstar config show --doc`` prints each value, where it came from
and what it does (the docstring under each field).

This module imports no ML library, so ``rstar --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    policy: str = "smollm2-135m"
    """Policy weights: the built-in name ``smollm2-135m`` or a local Hugging Face model directory."""
    ppm: str | None = None
    """PPM directory (saved by ``actors.ppm.save_ppm``); None searches without a PPM."""
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    """Generation engine: ``transformers`` (default, CPU/CUDA), ``vllm`` (optional extra) or
    ``openai`` (a remote OpenAI-compatible completions endpoint, e.g. the bootstrap teacher)."""
    device: str = "auto"
    """``auto`` picks CUDA when present, else CPU."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype; keep float32 on CPU (bf16 measured unusably slow there)."""
    threads: int = Field(0, ge=0)
    """torch CPU threads; 0 keeps torch's default (one per core). On a box whose cores are also
    busy with other work (sandbox workers, other processes) 1 can be far faster: OpenMP threads
    wait on each other when a core is taken (``benchmarks/backend_throughput.py --threads N``
    compares)."""
    max_batch: int = Field(64, ge=1)
    """Most sequences in one backend call (and texts in one PPM forward)."""
    prefix_cache: int = Field(4, ge=0)
    """Prompt prefixes whose KV the transformers backend keeps between calls (LRU); 0 keeps
    none, though prompts within one call still share their common prefix."""
    openai_url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible server (``/completions`` is appended)."""
    openai_model: str = ""
    """Model name the server serves (required with backend = 'openai')."""
    openai_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the endpoint's key (the key is never in config)."""
    openai_timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout for the openai backend."""
    openai_retries: int = Field(4, ge=0)
    """Retries (exponential backoff) on connection errors, timeouts, HTTP 429 and 5xx."""
    cache_dir: Path = Path.home() / ".cache" / "rstar"
    """Where converted model weights are cached."""


class GenerationConfig(Section):
    temperature: float = Field(0.8, ge=0.0)
    """Sampling temperature for expansions; 0 is greedy."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass (the transformers backend takes it within the top 256 tokens)."""
    max_step_tokens: int = Field(160, ge=8)
    """Most new tokens in one step; a step that hits it without a delimiter is dropped."""
    few_shot: bool = True
    """Prepend worked examples (needed until the policy is fine-tuned on the format)."""


class SearchConfig(Section):
    c_uct: float = Field(2.0, ge=0.0)
    """Exploration weight c in UCT = Q + c·sqrt(ln N_parent / N) (paper: 2)."""
    n_children: int = Field(5, ge=1)
    """Candidates sampled per expansion (paper: 5 in round 1, 8 later)."""
    max_depth: int = Field(16, ge=1)
    """Most steps in one trajectory: a node this deep is not expanded further."""
    rollouts: int = Field(8, ge=1)
    """Rollouts (selection→expansion→backup passes) per problem."""
    trees_in_flight: int = Field(16, ge=1)
    """K: trees searched concurrently, their expansions batched into one backend call."""
    ppm_init: bool = False
    """PPM-augmented Q initialisation (paper: from round 3)."""
    seed: int = 0
    """Seed of each tree's random tie-breaks between equally scored children and of its samples:
    with it, a problem's tree depends on the problem, the round and the models, not on the trees
    searched beside it (on a backend that seeds each prompt: transformers, vLLM on a GPU)."""


class SandboxConfig(Section):
    """The code sandbox (``actors/sandbox.py``, which states what is and is not guaranteed)."""

    workers: int = Field(2, ge=1)
    """Worker processes; each runs one call at a time, in a fresh forked child."""
    timeout_s: float = Field(5.0, gt=0)
    """Wall-clock limit of one call (its child is killed when it passes)."""
    cpu_s: int = Field(5, ge=1)
    """CPU seconds one call may use (RLIMIT_CPU)."""
    memory_mb: int = Field(512, ge=64)
    """Address space one call may add on top of the interpreter's own (RLIMIT_AS)."""
    file_mb: int = Field(16, ge=1)
    """Largest file a call may write in its scratch dir (RLIMIT_FSIZE)."""
    scratch_mb: int = Field(64, ge=8)
    """Size of each worker's private tmpfs that holds the scratch dirs."""
    max_output_chars: int = Field(4000, ge=100)
    """Most characters one step may print to stdout (and to stderr); more fails the call."""
    cache_entries: int = Field(4096, ge=0)
    """Ancestor-state cache size (0 disables)."""
    snapshot_kb: int = Field(64, ge=1)
    """Largest pickled namespace kept in the ancestor cache; larger states are re-run."""
    snapshot_min_ms: float = Field(1.0, ge=0)
    """Cache a prefix's state only when its steps took at least this much CPU time to run: a
    snapshot costs about 1 ms, re-running a few lines of arithmetic far less."""
    isolation: Literal["strict", "weak"] = "strict"
    """``strict`` refuses to start unless every mechanism works (root with CAP_SYS_ADMIN);
    ``weak`` keeps what works and logs what is missing."""
    modules: list[str] = [
        "math",
        "cmath",
        "fractions",
        "itertools",
        "functools",
        "operator",
        "statistics",
        "sympy",
        "numpy",
    ]
    """Allow-list of stateless modules: a worker imports one (once, before forking) when a
    program names it, and a cached snapshot may refer only to these."""
    grace_s: float = Field(10.0, gt=0)
    """How much longer than ``timeout_s`` the pool waits for a worker's reply (fork, first import
    of an allow-listed module) before it replaces the worker as hung."""


class BrokerConfig(Section):
    url: str | None = None
    """NATS URL; None uses an embedded nats-server on embedded_port (started if nothing listens
    there), its JetStream store under ``data_dir/nats``."""
    max_payload: int = Field(1024 * 1024, ge=1024)
    """Largest message the embedded server accepts. Publishers use the connected server's limit,
    which may differ for an external server."""
    embedded_host: str = "127.0.0.1"
    """Interface the embedded server listens on (``0.0.0.0`` to let other machines in)."""
    embedded_port: int = Field(4233, ge=1, le=65535)
    """Port of the embedded server; not 4222, so it never mixes with a system-wide NATS."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """How long the first connection may take before the process fails."""
    publish_timeout_s: float = Field(5.0, gt=0)
    """Wait for one JetStream publish ack."""
    publish_retry_s: float = Field(60.0, ge=0)
    """Keep retrying a publish (timeouts, no responders) this long, e.g. while the server restarts."""
    dedup_window_s: float = Field(300.0, gt=0)
    """Nats-Msg-Id duplicate window of PROBLEMS and TREES: a retried publish within it is dropped."""
    trees_max_age_s: float = Field(14 * 86400.0, ge=0)
    """How long TREES keeps trees after ingest (a replay window); 0 keeps them forever."""
    dlq_max_age_s: float = Field(30 * 86400.0, ge=0)
    """How long the dead-letter stream keeps poison messages; 0 keeps them forever."""
    problems_ack_wait_s: float = Field(900.0, gt=0)
    """An actor must ack (or mark in progress) a problem within this, else it is redelivered."""
    problems_max_deliver: int = Field(5, ge=1)
    """Deliveries of one problem before the actors consumer gives up on it."""
    trees_ack_wait_s: float = Field(60.0, gt=0)
    """Ingest must commit and ack a tree within this, else it is redelivered (harmless: upsert)."""
    heartbeat_ttl_s: float = Field(60.0, gt=0)
    """Actor heartbeats vanish from KV ``actors`` this long after the last one."""
    compress_min_bytes: int = Field(16 * 1024, ge=0)
    """Encoded trees larger than this are zlib-compressed before publishing."""
    max_tree_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Largest decoded tree a consumer accepts (guards decompression and reassembly)."""
    partial_ttl_s: float = Field(600.0, gt=0)
    """A chunked tree still missing parts after this goes to the dead-letter stream."""


class StoreConfig(Section):
    url: str | None = None
    """SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:5432/db``; None means
    the SQLite file ``data_dir/rstar.db``."""


class ApiConfig(Section):
    host: str = "127.0.0.1"
    """Interface the HTTP API and explorer listen on."""
    port: int = Field(8321, ge=0, le=65535)
    """Port of the HTTP API and explorer."""
    token: str | None = None
    """Bearer token for write endpoints; writes are refused when unset."""
    metrics_refresh_s: float = Field(15.0, ge=0)
    """Store gauges on /metrics are recomputed at most this often (a few aggregate queries)."""


class TrainConfig(Section):
    """Policy SFT and PPM training (the learner)."""

    method: Literal["full", "lora"] = "full"
    """Full fine-tune, or LoRA adapters (peft) merged into the weights when saved."""
    lr: float = Field(5e-5, gt=0)
    """Peak learning rate of the policy's SFT (AdamW, linear warm-up then cosine decay)."""
    epochs: int = Field(2, ge=1)
    """Passes over a round's SFT data (unless ``steps`` fixes the budget)."""
    steps: int = Field(0, ge=0)
    """Optimizer steps of a round's SFT, whatever the data's size (the data is reshuffled each
    pass): a fixed training budget per round, so a run and its control spend the same compute;
    0 = ``epochs`` passes over the data."""
    bootstrap_lr: float | None = Field(None, gt=0)
    """Round 0's SFT learning rate; None = ``lr``. A policy trained from scratch (``nano``) needs
    a far higher rate than a fine-tune."""
    bootstrap_steps: int | None = Field(None, ge=0)
    """Round 0's SFT optimizer steps; None = ``steps``."""
    batch_size: int = Field(4, ge=1)
    """SFT examples per micro-batch."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (effective batch = batch_size × grad_accum)."""
    max_len: int = Field(512, ge=32)
    """Longest example in tokens (prompt + solution); longer ones are dropped, with a count logged."""
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank (``method = "lora"``)."""
    lora_alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    save_every: int = Field(50, ge=1)
    """Optimizer steps between resumable training checkpoints."""
    seed: int = 0
    """Seed of the SFT data order and initialisation, the PPM head and its held-out pair split."""
    sft_per_problem: int = Field(2, ge=1)
    """Correct trajectories per solved problem in the SFT set (paper: 2)."""
    searched_share: float = Field(0.0, ge=0, lt=1)
    """The least share of a round's SFT examples that are the search's own trajectories (not the
    teacher's): when they are fewer, each is repeated (the same number of times) until they reach
    it. 0 = the selection as it is. With a fixed ``steps`` budget this sets how much of a round's
    training goes to what the actors found; a control run has none to repeat."""
    ppm_pairs_k: int = Field(2, ge=1)
    """Positives and negatives per step for PPM pairs (paper: 2 and 2)."""
    ppm_lr: float = Field(2e-5, gt=0)
    """Peak learning rate of the PPM's pairwise training."""
    ppm_epochs: int = Field(1, ge=1)
    """Passes over a round's PPM pairs."""
    ppm_heldout_fraction: float = Field(0.1, ge=0, lt=1)
    """Fraction of PPM pairs (by tree) held out to report pairwise accuracy."""
    ppm_batch_size: int = Field(4, ge=1)
    """Pairs per PPM micro-batch (each pair is two sequences)."""
    ppm_max_pairs: int = Field(0, ge=0)
    """Train the PPM on at most this many pairs of a round (a seeded sample); 0 = all of them.
    A CPU budget knob: a pair costs about as much as two SFT examples."""
    log_every: int = Field(10, ge=1)
    """Optimizer steps between loss log lines when no progress bar is shown (the service)."""
    threads: int = Field(0, ge=0)
    """torch CPU threads while training; 0 keeps torch's default (one per core). On a busy
    shared CPU, 1 avoids threads spinning against each other (``benchmarks/train_speed.py
    --threads N`` compares)."""
    autocast: Literal["off", "bf16"] = "off"
    """Mixed precision of the forward pass while training (``torch.autocast``; the weights and
    optimizer stay float32): ``bf16`` is faster on a GPU and on CPUs with bf16 instructions
    (``benchmarks/train_speed.py --autocast bf16`` compares), at bf16's rounding of activations."""


class LearnerConfig(Section):
    """The round controller (``learner/rounds.py``), the bootstrap round and per-round evaluation."""

    base_model: str | None = None
    """Model round 0's policy is trained from (and, with ``finetune_from = "base"``, every
    round's); None = model.policy."""
    finetune_from: Literal["base", "bootstrap", "previous"] = "base"
    """What a round R >= 1 policy is fine-tuned from: the base model (the paper), round 0's
    policy (``bootstrap``: for a base trained from scratch, like ``nano``, the bootstrap policy is
    the real base), or round R - 1's policy (``previous``: training accumulates over rounds)."""
    control: bool = False
    """A control run: every round trains on the teacher's trees only (round 0's selection), with
    the same settings, search and training budget, so that the gains of a self-evolution run
    can be measured against the same compute without self-evolution."""
    pool: str = "synthetic"
    """The problem pool ``rstar up`` queues when given neither ``--dataset`` nor ``--problems``
    (``rstar eval --dataset`` names, joined by ``+`` to interleave)."""
    pool_include_teacher: bool = False
    """Queue the teacher's demonstrated problems for search too (``rstar up``, ``rstar problems
    add``, the learner's re-queue: ``learner.pool``). By default they are left out, and counted;
    held-out evaluation problems are left out always."""
    teacher: Literal["curriculum", "openai", "none"] = "curriculum"
    """Round 0's teacher: the synthetic curriculum's reference solutions, an OpenAI-compatible
    endpoint (``model.openai_url`` / ``model.openai_model``), or none (round 0 collects actor
    trees like any other round)."""
    teacher_problems: int = Field(300, ge=1)
    """How many problems the teacher demonstrates (round 0's quota)."""
    teacher_source: str = "synthetic"
    """Problems for the teacher: ``synthetic`` (train split, ``teacher_levels``) or any
    ``rstar.problems.load_problems`` name or JSONL file (its held-out part is never used)."""
    teacher_levels: list[int] = [1, 2, 3]
    """Curriculum levels the teacher demonstrates (harder levels stay for self-evolution)."""
    teacher_rollouts: int = Field(4, ge=1)
    """MCTS rollouts per problem with the openai teacher."""
    teacher_seed: int = 0
    """Seed of the teacher's problem sample (the curriculum generator, or a set's shuffle)."""
    round_quota: int = Field(200, ge=1)
    """New trees (``trees.round == R``) that close round R >= 1."""
    round_time_limit_s: float = Field(6 * 3600.0, gt=0)
    """A round also closes this long after it opened, if it has at least one tree."""
    max_rounds: int = Field(0, ge=0)
    """Last round to train; 0 = no limit. After publishing it the learner only ingests."""
    poll_s: float = Field(5.0, gt=0)
    """How often the controller checks a collecting round's tree count."""
    stop_timeout_s: float = Field(60.0, gt=0)
    """On SIGTERM, how long the learner may take to stop (training finishes its optimizer step
    and saves its state, ingest commits its batch) before the process is ended anyway: training
    then resumes from its last periodic save (``train.save_every``). ``rstar.stopping``."""
    ppm_init_from_round: int = Field(3, ge=1)
    """First round searched PPM-augmented (paper: 3). The pointer for a round below it carries
    no PPM; actors enable ``search.ppm_init`` exactly when the pointer carries one."""
    sft_rounds_window: int = Field(1, ge=1)
    """Rounds of trees pooled for selection (1 = this round only, as the paper)."""
    requeue_rollouts: int = Field(64, ge=1)
    """Rollout budget (``meta["rollouts"]``) for problems a round left unsolved (paper: 16 -> 64);
    problems already searched with this many are not re-queued again."""
    eval_synthetic_n: int = Field(30, ge=0)
    """Held-out synthetic problems per evaluation (curriculum ``heldout`` split)."""
    eval_sampled_n: int = Field(0, ge=0)
    """Majority@k, MCTS@k and MCTS+PPM@k run on the first this many problems of each set (they
    cost about k times a greedy chain each); 0 = every problem, as greedy. The first problems of
    the synthetic set take the levels in turn, so a prefix keeps them balanced."""
    eval_levels: list[int] = [1, 2, 3, 4, 5, 6]
    """Curriculum levels of the held-out synthetic problems (taken in turn)."""
    eval_real: str | None = "svamp"
    """A real set whose held-out part (``eval_real_fraction``, hash split by ``eval_seed``) is
    evaluated; its pool part may be used for training. None skips it."""
    eval_real_n: int = Field(30, ge=0)
    """Problems from the real set's held-out part per evaluation (0 skips it)."""
    eval_real_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of the real set held out; the teacher and training never see that part."""
    eval_k: int = Field(4, ge=1)
    """Samples for majority@k and rollouts for MCTS@k and MCTS+PPM@k."""
    eval_methods: list[Literal["greedy", "majority", "mcts", "mcts+ppm"]] = ["greedy", "majority", "mcts", "mcts+ppm"]
    """Methods evaluated each round: ``mcts`` never uses a PPM; ``mcts+ppm`` runs on rounds that
    have one (PPM-augmented Q, answer by PPM score) and is skipped on the others."""
    eval_seed: int = 0
    """Seed of the held-out sets (synthetic generator, real-set split): fixed across rounds."""

    @model_validator(mode="after")
    def _check_levels(self) -> LearnerConfig:
        for name in ("teacher_levels", "eval_levels"):
            levels = getattr(self, name)
            if not levels or any(not 1 <= lv <= 6 for lv in levels):
                raise ValueError(f"learner.{name} must be a non-empty subset of 1..6, got {levels}")
        return self


class ActorConfig(Section):
    """The actor service (``rstar actor``, ``actors/service.py``)."""

    id: str | None = None
    """Actor id in heartbeats and trees; None = ``<host>-<pid>``. Must be unique in the fleet."""
    trees_in_flight: int | None = Field(None, ge=1)
    """K: trees searched at once, their expansions batched; None = ``search.trees_in_flight``."""
    fetch_batch: int = Field(4, ge=1)
    """Most problems pulled in one fetch (never more than the free tree slots)."""
    fetch_timeout_s: float = Field(1.0, gt=0)
    """How long one fetch waits for problems (also how quickly a stop request is noticed)."""
    in_progress_s: float | None = Field(None, gt=0)
    """How often a running tree tells the broker it is still being worked on (extends ack_wait);
    None = a third of ``broker.problems_ack_wait_s``."""
    heartbeat_s: float = Field(10.0, gt=0)
    """Seconds between heartbeats (keep well under ``broker.heartbeat_ttl_s``)."""
    grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight trees may run on before their problems are returned (nak).
    The process exits within ``grace_s`` + 30 s of SIGTERM whatever the load (``rstar.stopping``)."""
    checkpoint_dir: Path | None = None
    """Where downloaded checkpoints are cached, one directory per version; None =
    ``data_dir/checkpoints``. Only the serving pair and the one being loaded are kept."""
    wait_for_model: bool = False
    """Pull no problems until a model pointer exists (``rstar up`` sets this while the learner's
    bootstrap teacher trains round 0: base-model trees would use up the pool for nothing)."""
    swap_retry_s: float = Field(5.0, gt=0)
    """Wait before retrying a checkpoint download that failed for a transient reason (broker away)."""
    nice: int = Field(0, ge=0, le=19)
    """CPU niceness the actor process takes at start (its threads and sandbox workers inherit
    it). On a machine the actor shares with the learner (``rstar up`` on a CPU), a positive value
    lets training and evaluation go first (README "The SmolLM2 learning run": SFT per example
    beside an equal-priority actor and an evaluation vs beside one other process, from
    ``docs/learning-run.json``)."""


class Config(Section):
    data_dir: Path = Path("data")
    """Where a run keeps its files: the SQLite store (unless ``store.url``), the learner's round
    directories, the resolved ``run/config.json`` and the logs."""
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    search: SearchConfig = SearchConfig()
    sandbox: SandboxConfig = SandboxConfig()
    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    train: TrainConfig = TrainConfig()
    learner: LearnerConfig = LearnerConfig()
    actor: ActorConfig = ActorConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.model.backend == "openai" and not self.model.openai_model:
            raise ValueError("model.openai_model must name the served model when backend = 'openai'")
        return self

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{(self.data_dir / 'rstar.db').resolve()}"


SECTIONS = tuple(
    k for k, f in Config.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
)


class ConfigError(ValueError):
    pass


def _parse_value(raw: str, text: bool = False) -> Any:
    """A TOML value when ``raw`` parses as one, else ``raw``; for a text field (``text``) a
    parsed non-string (``123456``, ``42``) stays the string it was written as. ``raw`` must be
    one value whole: ``1\nx = 2`` is not the value 1 (it stays the string, which the field's
    type then refuses)."""
    try:
        doc = tomllib.loads(f"v = {raw}")
    # ValueError: TOML errors, and integers past Python's 4,300-digit limit;
    # RecursionError: arrays or tables nested past the stack (tomllib has no depth limit).
    except (ValueError, RecursionError):
        return raw
    if list(doc) != ["v"]:
        return raw
    value = doc["v"]
    return raw if text and not isinstance(value, str) else value


def _is_text(dotted: str) -> bool:
    """Whether the field at ``section.field`` (or a top-level field) holds text: str or Path."""
    model: type[BaseModel] = Config
    *sections, name = [k.strip().replace("-", "_") for k in dotted.split(".")]
    for k in sections:
        ann = model.model_fields[k].annotation if k in model.model_fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return False
        model = ann
    field = model.model_fields.get(name)
    if field is None:
        return False
    kinds = set(typing.get_args(field.annotation)) - {type(None)} or {field.annotation}
    return bool(kinds) and kinds <= {str, Path}


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = [k.strip().replace("-", "_") for k in dotted.split(".")]
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _read_file(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        tree = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)  # .json: saved by dump_config
    # OSError: unreadable; ValueError: not UTF-8, not TOML/JSON, an integer past 4,300 digits;
    # RecursionError: nested past the stack.
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{p}: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: not a table of settings but a JSON {type(tree).__name__}")
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """``RSTAR_<FIELD>`` / ``RSTAR_<SECTION>__<FIELD>`` as a tree. Other ``RSTAR_*`` names without
    ``__`` (``RSTAR_LOG_LEVEL``, ...) are not config; a ``__`` name must start with a section."""
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        key = name[len("RSTAR_") :].lower() if name.startswith("RSTAR_") else ""
        section = key.split("__")[0]
        if "__" in key and section not in Config.model_fields:
            raise ConfigError(f"{name}: no config section {section!r} (sections: {', '.join(SECTIONS)})")
        if section in Config.model_fields:
            dotted = key.replace("__", ".")
            _set_path(tree, dotted, _parse_value(raw, _is_text(dotted)))
    return tree


def config_layers(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    preset: str | Path | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The sources of a config, lowest first, each named: ``preset NAME``, ``file PATH``, ``env``,
    ``--set``. The defaults (the classes above) are below all of them."""
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        layers.append((f"preset {Path(preset).stem}", _read_file(Path(preset))))
    path = path or env.get("RSTAR_CONFIG")
    if path:
        layers.append((f"file {path}", _read_file(Path(path))))
    layers.append(("env", _env_layer(env)))
    overridden: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set_path(overridden, key, _parse_value(raw, _is_text(key)))
    layers.append(("--set", overridden))
    return layers


def value_sources(layers: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """``section.field`` → the name of the last layer that set it (fields no layer sets are absent)."""
    out: dict[str, str] = {}
    for name, tree in layers:
        for key, value in tree.items():
            section = isinstance(value, dict) and key in SECTIONS
            for sub in value if section else {None: value}:
                out[f"{key}.{sub}" if section else key] = name
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    preset: str | Path | None = None,
) -> Config:
    """Build the Config from defaults, a preset, a TOML (or resolved JSON) file, environment and
    ``key=value`` overrides, in that order (``config_layers``)."""
    tree: dict[str, Any] = {}
    for _, layer in config_layers(path, overrides, env, preset):
        tree = _merge(tree, layer)
    try:
        return Config.model_validate(tree)
    except Exception as e:  # pydantic's message names every bad field
        raise ConfigError(str(e)) from None


def dump_config(cfg: Config, path: Path) -> None:
    """Save the resolved config as JSON beside a run, so it can be reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
