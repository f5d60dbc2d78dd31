"""The one interface every generation backend implements.

A backend continues many prompts at once, ``n`` samples each, stopping at the step delimiter.
It is synchronous and blocking on purpose: the search runs it in a worker thread
(``actors.batcher``) so the event loop keeps driving sandboxes and the broker meanwhile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class GenParams(msgspec.Struct, frozen=True):
    n: int = 1
    max_tokens: int = 160
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ("<end_of_step>",)
    seed: int | None = None


def prompt_seeds(n_prompts: int, params: GenParams, seeds: list[int] | None) -> list[int]:
    """The seed of each prompt: ``seeds`` as given, else ``params.seed + i`` for prompt ``i``, else
    drawn from torch's global generator (``torch.manual_seed`` makes those reproducible)."""
    if seeds is not None:
        if len(seeds) != n_prompts:
            raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
        return list(seeds)
    if params.seed is not None:
        return [params.seed + i for i in range(n_prompts)]
    import torch

    return torch.randint(0, 2**62, (n_prompts,)).tolist()


class Generation(msgspec.Struct):
    text: str
    """The continuation, cut just before the stop string (the stop string itself is not included)."""
    tokens: int
    """Generated tokens counted for this continuation (up to and including the stop string)."""
    stopped: bool
    """True when a stop string ended it; False when it ran out of ``max_tokens`` or hit EOS."""
    eos: bool = False
    """True when the model emitted its end-of-sequence token."""


class BackendError(RuntimeError):
    """The backend could not serve a request (model missing, endpoint down after retries, ...)."""


class Backend(ABC):
    name: str = "backend"
    version: str = ""
    """Version label of the loaded policy weights (recorded on every node it produces)."""
    tokenizer: PreTrainedTokenizerBase | None = None
    """The policy's HF tokenizer when it runs locally (chat template, PPM text); None if remote."""

    @abstractmethod
    def generate(self, prompts: list[str], params: GenParams, seeds: list[int] | None = None) -> list[list[Generation]]:
        """``params.n`` continuations for each prompt, in prompt order.

        ``seeds``: one per prompt (see ``prompt_seeds``). A backend that can seed each prompt on
        its own makes a prompt's samples independent of what else is in the call.
        """

    def load_weights(self, path: str, version: str) -> None:
        """Swap to the weights in ``path`` (a HF model directory) between two generate() calls."""
        raise NotImplementedError(f"{self.name} backend cannot swap weights")

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to release
        pass
