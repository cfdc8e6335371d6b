"""The one interface every classification method scores through (as lm-evaluation-harness does).

A method never touches tensors: it builds (context, continuation) string pairs and asks the
language model for log p(continuation | context).  Tests use a fake model with the same methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Protocol, Sequence, Tuple, Union

if TYPE_CHECKING:
    import numpy as np


class TextTokenizer(Protocol):
    bos_id: int
    eos_id: int
    n_words: int
    add_bos: bool

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class LanguageModel(Protocol):
    tokenizer: TextTokenizer
    max_seq_len: int
    # Whether loglikelihood adds log p(EOS | context, continuation) to every score.
    append_eos: bool

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        """Sum of log-probabilities of the continuation's tokens given the context.

        Context and continuation are concatenated exactly as given (callers put the joining
        space at the start of the continuation), tokenized jointly, and split where the
        context's own tokens end; BOS is prepended when the tokenizer says so.
        """
        ...

    def generate_until(
        self,
        contexts: Sequence[str],
        max_gen_len: int,
        stop: Sequence[str] = ("\n",),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Union[None, int, Sequence[int]] = None,
    ) -> List[str]:
        """Continue each context; cut each output before the first stop string or EOS.

        ``seed``: one per context makes each sample independent of how contexts are batched.
        """
        ...


class HiddenStateModel(LanguageModel, Protocol):
    """A language model that also shows its hidden states (``--save_hidden``, the anchor
    calibrations, ``--demos knn``): :class:`classification.backend.scoring.LlamaLM` and the test double."""

    def context_hidden(self, contexts: Sequence[str]) -> "np.ndarray":
        """(n, dim) float32: the final-normed hidden state at the last token of each context
        (the position whose next-token distribution scores the label)."""
        ...

    def context_states(self, contexts: Sequence[str]) -> "np.ndarray":
        """(n, layers, dim) float32: the states of the layers ``hidden_layers`` names (numbered as
        HF transformers' hidden states; the last is the final-normed state) at that position.
        Optional: ``--save_hidden`` keeps ``context_hidden`` alone for a model without it."""
        ...

    def text_embeddings(self, texts: Sequence[str]) -> "np.ndarray":
        """(n, dim) float32: each text's hidden states (the text alone) mean-pooled."""
        ...

    def next_token_log_probs(self, hidden: "np.ndarray") -> "np.ndarray":
        """(n, vocab) float32: the output head's log-softmax applied to final-normed hidden states."""
        ...
