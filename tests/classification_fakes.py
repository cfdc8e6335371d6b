"""Test doubles for the classification package: a whitespace-token language model and runtimes.

FakeLM scores a continuation by its overlap with the context's last two lines:
    score = -0.25 * (#continuation words) + 2 * (#continuation words found in those lines)
            - 0.5 (when append_eos) - 0.1 (when the continuation ends with a newline)
so "Article: a sports match\\nCategory:" + " Sports" beats the other labels (direct), and
"Category: Sports\\nArticle:" + " a sports match" beats the other label prompts (channel).

Its hidden states (classification.backend.hidden) are as simple: at a context's last token, the counts
of the four topic words in those two lines and the number of words there; a text's embedding is
its bag of words hashed (crc32) into 64 buckets; next-token log-probs are log-softmax([2h, 0]).
"""

from __future__ import annotations

import threading
import zlib
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from classification.inputs.sampling import Example

PUNCT = ".,:;!?\"'()"


def norm(word: str) -> str:
    return word.strip(PUNCT).lower()


class FakeCrash(RuntimeError):
    """Raised by FakeLM to simulate a run killed half way."""


class WhitespaceTokenizer:
    bos_id = 1
    eos_id = 2
    n_words = 1 << 30

    def __init__(self, add_bos: bool = True) -> None:
        self.add_bos = add_bos
        self.ids: Dict[str, int] = {}
        self.words: List[str] = []

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        out = [self.bos_id] if bos else []
        for w in s.split():
            if w not in self.ids:
                self.ids[w] = len(self.words) + 3
                self.words.append(w)
            out.append(self.ids[w])
        return out + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i - 3] for i in ids if i >= 3)


class FakeLM:
    def __init__(
        self,
        max_seq_len: int = 100_000,
        append_eos: bool = True,
        fail_after_calls: Optional[int] = None,
        generator: Optional[Callable[[str], str]] = None,
        requests: Optional[Counter] = None,
        prefix_nll: Optional[float] = None,
    ) -> None:
        self.tokenizer = WhitespaceTokenizer()
        self.max_seq_len = max_seq_len
        self.append_eos = append_eos
        self.fail_after_calls = fail_after_calls
        self.generator = generator
        self.calls = 0
        self.requests: Counter = requests if requests is not None else Counter()
        self.batches: List[List[Tuple[str, str]]] = []
        self.contexts: List[str] = []
        self.prefix_nll = prefix_nll
        self.shared_prefixes: List[str] = []
        self.seeds: List[Optional[int]] = []

    def set_shared_prefix(self, text: str) -> Optional[float]:
        """Records the prefix; returns the mean loss the test chose (None: too short to tell)."""
        self.shared_prefixes.append(text)
        return self.prefix_nll

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise FakeCrash(f"killed at call {self.calls}")

    @staticmethod
    def window(context: str) -> set:
        return {norm(w) for line in context.split("\n")[-2:] for w in line.split()}

    def score(self, context: str, continuation: str) -> float:
        window = self.window(context)
        words = continuation.split()
        s = -0.25 * len(words) + 2.0 * sum(norm(w) in window for w in words)
        if self.append_eos:
            s -= 0.5
        if continuation.endswith("\n"):
            s -= 0.1
        return s

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        self._tick()
        self.batches.append(list(requests))
        for r in requests:
            self.requests[r] += 1
        return [self.score(c, x) for c, x in requests]

    def context_hidden(self, contexts: Sequence[str]) -> np.ndarray:
        rows = []
        for c in contexts:
            window = [norm(w) for line in c.split("\n")[-2:] for w in line.split()]
            rows.append([window.count(t) for t in TOPICS] + [len(window) / 10])
        return np.array(rows, dtype=np.float32).reshape(len(contexts), len(TOPICS) + 1)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(norm(w).encode()) % 64] += 1
        return out

    def next_token_log_probs(self, hidden: np.ndarray) -> np.ndarray:
        logits = np.concatenate([2 * hidden, np.zeros((len(hidden), 1))], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)

    def default_generation(self, context: str) -> str:
        last_article = [line for line in context.split("\n") if line.startswith("Article:")][-1]
        for w in last_article.split():
            if norm(w) in ("world", "sports", "business", "science"):
                return f" {norm(w).capitalize()} news\nArticle: more"
        return " I am not sure"

    def generate_until(
        self,
        contexts: Sequence[str],
        max_gen_len: int,
        stop: Sequence[str] = ("\n",),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed=None,
    ) -> List[str]:
        self._tick()
        out = []
        self.seeds.extend(seed if isinstance(seed, (list, tuple)) else [seed] * len(contexts))
        for c in contexts:
            self.contexts.append(c)
            g = (self.generator or self.default_generation)(c)
            for s in stop:
                g = g.split(s)[0]
            out.append(" ".join(g.split(" ")[: max_gen_len + 1]))
        return out


class ThreadGroup:
    """Shared state of ranks simulated by threads (a barrier and all_gather slots)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.sync = threading.Barrier(world_size, timeout=30)
        self.slots: List[object] = [None] * world_size


class ThreadRuntime:
    """The parts of llama.runtime.Runtime the runner uses, for one simulated rank."""

    def __init__(self, group: ThreadGroup, rank: int, mp_size: int = 1) -> None:
        self.group = group
        self.rank = rank
        self.world_size = group.world_size
        self.mp_size = mp_size

    mp_rank = property(lambda self: self.rank % self.mp_size)
    dp_rank = property(lambda self: self.rank // self.mp_size)
    dp_size = property(lambda self: self.world_size // self.mp_size)
    is_main = property(lambda self: self.rank == 0)

    def barrier(self) -> None:
        self.group.sync.wait()

    def all_gather_object(self, obj: object) -> List[object]:
        self.group.slots[self.rank] = obj
        self.group.sync.wait()
        out = [self.group.slots[r] for r in range(0, self.world_size, self.mp_size)]
        self.group.sync.wait()
        return out


def run_ranks(world_size: int, fn: Callable[[ThreadRuntime], object], mp_size: int = 1) -> List[object]:
    """Run fn(runtime) in one thread per rank; re-raise the first error."""
    group = ThreadGroup(world_size)
    results: List[object] = [None] * world_size
    errors: List[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadRuntime(group, rank, mp_size))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)
            group.sync.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        primary = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (primary or errors)[0]
    return results


TOPICS = ("world", "sports", "business", "science")


def synthetic_splits(n_train_per_class: int = 5, n_test_per_class: int = 6) -> Tuple[List[Example], List[Example]]:
    """Tiny ag_news-like splits whose texts name their topic (so FakeLM can classify them)."""
    def make(n: int, tag: str) -> List[Example]:
        out = []
        for i in range(n * len(TOPICS)):
            label = (i * 3) % len(TOPICS)
            filler = " ".join(f"w{tag}{i}x{j}" for j in range(i % 5 + 1))
            out.append(Example(text=f"{tag} item {i} {{about}} {TOPICS[label]} {filler}", label=label, index=i))
        return out

    return make(n_train_per_class, "tr"), make(n_test_per_class, "te")
