"""Demonstrations chosen for each input (``--demos bm25|knn``) and the anchors of hidden/kNN calibration.

For every test input the k most similar training examples *of each class* are taken, so the
prompt stays balanced, and ordered most-similar-last (the nearest demonstration sits next to the
input, as in KATE, Liu et al. 2022):

- ``bm25``: BM25 scores of the training texts for the input's text (``bm25s``, English stop
  words removed, scikit-learn's word pattern);
- ``knn``: cosine similarity of text embeddings.  The default embedder is the scoring model
  itself (its ``text_embeddings``: mean-pooled last hidden states of each text alone, loaded by
  the caller's loader only when a text is not cached), so it works offline with any checkpoint;
  ``--embedder PATH`` takes a local sentence-transformers model instead (optional package).
  Embeddings are cached beside the records (``embeddings.<embedder>.npz``, keyed by a hash of each
  text), so seeds, k and methods that share a folder embed each text once.

Ties go to the earlier training example.  A training example whose text equals the input's is
never its demonstration (duplicates across splits would leak the label; an anchor never sees
itself).  ``demo_pool`` bounds the training pool to a stratified sample of that many examples
drawn with the demonstration seed; with the whole pool, retrieval does not depend on the seed.
A class with fewer training examples than its share of the pool (imbalanced datasets: trec's
abbreviation questions) gives all it has: one printed line and ``demo_pool_short`` in the
records' ``meta`` say so (:func:`retrieval_pool`).

Anchors (``--n_anchor m``): m training examples per class, drawn with the seed, written as their
own records with the test set's prompt (``<data_path stem>.anchors.json``) for the hidden and kNN
calibrations.  They are never demonstrations: random demonstrations are drawn first (so the test
records stay byte-identical) and the anchors from the rest; for bm25/knn the anchors are taken
out of the retrieval pool.  :func:`records_and_anchors` builds both, for any ``--demos``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from classification.errors import ClassificationError, check_int, writing
from classification.inputs.datasets import Dataset, random_demo_records
from classification.inputs.sampling import DEMO_SAMPLINGS, Example, by_class, draw_demonstrations, stratified
from classification.lm import HiddenStateModel
from classification.fileio import files_digest
from classification.paths import embedder_tag, staging_path
from classification.templates import build_prompt_from_template, has_placeholder

DEMOS = ("random", "bm25", "knn")
Selector = Callable[[Sequence[Example]], List[List[Example]]]


def check_demos(
    demos: str, demo_pool: Optional[int], embedder: Optional[str], n_anchor: int, demo_sampling: str = "default"
) -> None:
    """One-line errors for the retrieval flags (and ``--demo_sampling``, which only random demonstrations take)."""
    if demos not in DEMOS:
        raise ClassificationError(f"--demos {demos!r} is not one of {', '.join(DEMOS)}")
    if demo_sampling not in DEMO_SAMPLINGS:
        raise ClassificationError(f"--demo_sampling {demo_sampling!r} is not one of {', '.join(DEMO_SAMPLINGS)}")
    if demo_sampling != "default" and demos != "random":
        raise ClassificationError(f"--demo_sampling {demo_sampling} applies to --demos random, not {demos}")
    for flag, value, least in (("--demo_pool", demo_pool, 1), ("--n_anchor", n_anchor, 0)):
        if value is not None:
            check_int(flag, value, least)
    if demo_pool is not None and demos == "random":
        raise ClassificationError("--demo_pool applies to --demos bm25 or knn")
    if embedder is not None:
        if demos != "knn":
            raise ClassificationError("--embedder applies to --demos knn")
        if not Path(embedder).exists():
            raise ClassificationError(f"--embedder {embedder} does not exist; pass a local sentence-transformers model")


def draw_anchors(
    train: Sequence[Example], n_anchor: int, seed: int, n_classes: int, taken: Sequence[Example] = ()
) -> List[Example]:
    """``n_anchor`` training examples per class, not in ``taken``, from a random stream of their own per seed."""
    used = {ex.index for ex in taken}
    free = [ex for ex in train if ex.index not in used and not has_placeholder(ex.text)]
    rng = random.Random(f"anchors-{seed}")
    return stratified(free, n_anchor * n_classes, rng, n_classes, f"--n_anchor {n_anchor}")


def nearest_per_class(
    scores: np.ndarray, labels: np.ndarray, k: int, n_classes: int, excluded: np.ndarray
) -> List[int]:
    """Pool positions of the ``k`` best-scoring examples of each class, ordered most-similar-last.

    ``scores``/``labels``/``excluded``: (n_pool,) arrays.  Ties go to the earlier position.
    """
    chosen: List[int] = []
    positions = np.arange(len(scores))
    for c in range(n_classes):
        cand = positions[(labels == c) & ~excluded]
        if len(cand) < k:
            raise ClassificationError(
                f"--k {k} is larger than the retrieval pool of label {c} ({len(cand)} usable examples); "
                "use a smaller --k or a larger --demo_pool"
            )
        best = cand[np.lexsort((cand, -scores[cand]))[:k]]  # by score, then position
        chosen.extend(int(p) for p in best)
    # Most similar last; on equal scores the earlier example comes last (it won the tie).
    return sorted(chosen, key=lambda p: (scores[p], -p))


def bm25_scorer(pool_texts: Sequence[str]) -> Callable[[str], np.ndarray]:
    """A function text -> (n_pool,) BM25 scores of the pool's texts (the index is built once)."""
    try:
        import bm25s  # third-party, needed by --demos bm25 only: imported where used
    except ImportError:
        raise ClassificationError("--demos bm25 needs the `bm25s` package: pip install bm25s") from None
    corpus = bm25s.tokenize(list(pool_texts), stopwords="en", show_progress=False)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    vocab = corpus.vocab

    def score(text: str) -> np.ndarray:
        words = bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [w for w in words if w in vocab]
        if not known:
            return np.zeros(len(pool_texts), dtype=np.float32)
        return np.asarray(index.get_scores(known), dtype=np.float32)

    return score


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def select(
    pool: Sequence[Example], queries: Sequence[Example], k: int, n_classes: int,
    similarity: Callable[[Sequence[int]], np.ndarray],
) -> List[List[Example]]:
    """For each query, k pool examples per class by ``similarity`` (query positions -> (n, n_pool))."""
    labels = np.array([ex.label for ex in pool])
    texts: Dict[str, List[int]] = {}
    for p, ex in enumerate(pool):
        texts.setdefault(_norm_text(ex.text), []).append(p)
    out: List[List[Example]] = []
    for start in range(0, len(queries), 256):
        block = list(range(start, min(start + 256, len(queries))))
        sims = similarity(block)  # (len(block), n_pool)
        for row, q in zip(sims, block):
            excluded = np.zeros(len(pool), dtype=bool)
            excluded[texts.get(_norm_text(queries[q].text), [])] = True
            out.append([pool[p] for p in nearest_per_class(row, labels, k, n_classes, excluded)])
    return out


class EmbeddingCache:
    """Text embeddings of one embedder in an ``.npz`` beside the records, keyed by sha256 of the text.

    The embedder's tag (its name and content fingerprint: :func:`embedder_for`) names the file and
    is recorded in it (``made_from``); a file whose record is another embedder's is refused."""

    def __init__(self, path: Path, embedder: Optional[str] = None) -> None:
        self.path = path
        # Default: the tag in the file's name (embeddings.<tag>.npz, classification.paths.embeddings_path).
        name = path.name
        self.embedder = embedder or (name[len("embeddings."):-len(".npz")] if name.startswith("embeddings.") else name)
        self.vectors: Dict[str, np.ndarray] = {}
        if path.is_file():
            self.vectors = self._read(path)

    def _read(self, path: Path) -> Dict[str, np.ndarray]:
        """{key: vector} of a cache file; one line for a damaged or foreign one (it is only a cache)."""
        fix = "delete it to embed the texts again"
        try:
            with np.load(path) as data:
                keys, vectors = data["keys"], data["vectors"]
                made_from = json.loads(str(data["made_from"])) if "made_from" in data.files else None
        except Exception as e:  # noqa: BLE001 - BadZipFile, ValueError, OSError, EOFError, KeyError...
            cause = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ClassificationError(f"{path}: not a readable embeddings cache ({cause}); {fix}") from None
        if (keys.ndim != 1 or keys.dtype.kind != "U" or vectors.ndim != 2 or vectors.dtype.kind != "f"
                or len(keys) != len(vectors)):
            raise ClassificationError(
                f"{path}: an embeddings cache holds a list of keys and a (keys, dim) array of vectors, not "
                f"{keys.dtype}{list(keys.shape)} and {vectors.dtype}{list(vectors.shape)}; {fix}"
            )
        if not np.isfinite(vectors).all():
            raise ClassificationError(f"{path}: the embeddings cache holds NaN or infinite values; {fix}")
        recorded = made_from.get("embedder") if isinstance(made_from, dict) else None
        if recorded != self.embedder:
            raise ClassificationError(
                f"{path} holds the embeddings of embedder {recorded!r}, not of {self.embedder!r} (the one this run "
                f"uses, by its files' content); {fix}"
            )
        return dict(zip(keys.tolist(), vectors.astype(np.float32)))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def embed(self, texts: Sequence[str], compute: Callable[[List[str]], np.ndarray]) -> np.ndarray:
        """(n, dim) float32 unit vectors; computes (and saves) only the texts not cached yet."""
        keys = [self.key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in self.vectors}.items())
        if missing:
            vecs = np.asarray(compute([t for _, t in missing]), dtype=np.float32)
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            dims = {v.shape[0] for v in self.vectors.values()}
            if dims and dims != {vecs.shape[1]}:
                raise ClassificationError(
                    f"{self.path} holds {dims.pop()}-dimensional embeddings but the embedder gives "
                    f"{vecs.shape[1]}-dimensional ones; delete it to embed the texts again"
                )
            self.vectors.update({k: v for (k, _), v in zip(missing, vecs)})
            tmp = staging_path(self.path)
            with writing(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(tmp, keys=np.array(list(self.vectors)), vectors=np.stack(list(self.vectors.values())),
                         made_from=np.array(json.dumps({"embedder": self.embedder})))
                tmp.replace(self.path)
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def sentence_transformer(path: str) -> Callable[[List[str]], np.ndarray]:
    """The encode function of a local sentence-transformers model (optional package)."""
    try:
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]  # optional package
    except ImportError:
        raise ClassificationError(
            "--embedder needs the optional `sentence-transformers` package (pip install sentence-transformers), "
            "or leave --embedder out to embed with the scoring model"
        ) from None
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    return lambda texts: model.encode(texts, convert_to_numpy=True, show_progress_bar=False)


def retrieval_pool(
    train: Sequence[Example], seed: int, n_classes: int, demo_pool: Optional[int] = None,
    exclude: Sequence[Example] = (),
) -> Tuple[List[Example], Dict[int, Tuple[int, int]]]:
    """(the training examples retrieval draws from, the classes short of their share).

    Never ``exclude`` (the anchors) nor a text with a placeholder.  ``demo_pool``: a stratified
    sample of that many, drawn with ``seed``, each class its share (``demo_pool // C``, one more
    for the first ``demo_pool % C``); a class with fewer usable examples than its share gives all
    it has (the pool is then smaller), and is listed as {label: (share, drawn)}.
    """
    gone = {ex.index for ex in exclude}
    pool = [ex for ex in train if ex.index not in gone and not has_placeholder(ex.text)]
    if demo_pool is None:
        return pool, {}
    groups = by_class(pool, n_classes)
    shares = [demo_pool // n_classes + (1 if c < demo_pool % n_classes else 0) for c in range(n_classes)]
    short = {c: (shares[c], len(groups[c])) for c in range(n_classes) if len(groups[c]) < shares[c]}
    if not short:
        return stratified(pool, demo_pool, random.Random(seed), n_classes, f"--demo_pool {demo_pool}"), {}
    rng = random.Random(seed)  # as stratified: class by class, in split order
    drawn = [ex for c, group in enumerate(groups) for ex in rng.sample(group, min(shares[c], len(group)))]
    return sorted(drawn, key=lambda ex: ex.index), short


def make_selector(
    demos: str, train: Sequence[Example], k: int, seed: int, n_classes: int,
    demo_pool: Optional[int] = None, exclude: Sequence[Example] = (),
    embed: Optional[Callable[[List[str]], np.ndarray]] = None, cache_path: Optional[Path] = None,
) -> Selector:
    """queries -> their demonstrations (k per class) by ``demos`` (bm25 or knn) from ``train``.

    ``exclude``: examples never used as demonstrations (the anchors).  ``embed`` computes text
    embeddings for knn (cached in ``cache_path`` when given).
    """
    pool = retrieval_pool(train, seed, n_classes, demo_pool, exclude)[0]
    smallest = min(len(g) for g in by_class(pool, n_classes))
    if k > smallest:
        raise ClassificationError(
            f"--k {k} is larger than the smallest class of the retrieval pool ({smallest} examples); "
            "use a smaller --k or a larger --demo_pool"
        )

    def selector(queries: Sequence[Example]) -> List[List[Example]]:
        if demos == "bm25":
            score = bm25_scorer([ex.text for ex in pool])
            return select(pool, queries, k, n_classes, lambda qs: np.stack([score(queries[q].text) for q in qs]))
        assert embed is not None, "knn needs an embedder"
        compute = embed
        if cache_path is not None:
            cache = EmbeddingCache(cache_path)
            compute = lambda texts: cache.embed(texts, embed)  # noqa: E731
        vecs = compute([ex.text for ex in pool] + [ex.text for ex in queries])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        pool_vecs, query_vecs = vecs[: len(pool)], vecs[len(pool):]
        return select(pool, queries, k, n_classes, lambda qs: query_vecs[list(qs)] @ pool_vecs.T)

    return selector


Embed = Callable[[List[str]], np.ndarray]


def embedder_for(
    embedder: Optional[str], ckpt_dir: str, tokenizer_path: str, load_lm: Callable[[], HiddenStateModel],
    precision: str = "",
) -> Tuple[Embed, str]:
    """(embed function, cache tag) for ``--embedder`` (a sentence-transformers path) or the scoring
    model at ``ckpt_dir``, which ``load_lm`` loads the first time a text is not cached.

    The tag names the embedder and fingerprints its files' content (model and tokenizer; the
    digests resumed runs are checked with), so weights changed in place get a cache of their own
    instead of the demonstrations their old embeddings chose.  ``precision`` (the scoring model's
    dtype and device kind, e.g. "float32 cpu") is fingerprinted with them."""
    if embedder is not None:
        return sentence_transformer(embedder), "st-" + embedder_tag(embedder, files_digest([embedder]))

    state: Dict[str, Any] = {}

    def embed(texts: List[str]) -> np.ndarray:
        if "lm" not in state:  # loaded only when something is not cached yet
            state["lm"] = load_lm()
        return np.asarray(state["lm"].text_embeddings(texts), dtype=np.float32)

    digest = hashlib.sha256(f"{files_digest([ckpt_dir, tokenizer_path])} {precision}".encode()).hexdigest()
    return embed, embedder_tag(ckpt_dir, digest)


def records_and_anchors(
    dataset: Dataset, method: str, template: Optional[str], k: int, seed: int, sample: bool, n_sample: int,
    sample_seed: Optional[int], demos: str = "random", demo_pool: Optional[int] = None, n_anchor: int = 0,
    embed: Optional[Callable[[List[str]], np.ndarray]] = None, cache_path: Optional[Path] = None,
    demo_sampling: str = "default",
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(test records, anchor records) of ``dataset`` (:class:`classification.inputs.datasets.Dataset`).

    ``demos`` random: :func:`classification.inputs.datasets.random_demo_records`'s records,
    unchanged (demonstrations drawn as ``demo_sampling`` says).  bm25/knn: the same records with each prompt's demonstrations retrieved for its
    input; each record keeps the train indices of its demonstrations (``demo_indices``, in prompt
    order).
    """
    n_classes = len(dataset.label_words)
    if demos == "random":
        records = random_demo_records(dataset, method, template, k=k, seed=seed, sample=sample, n_sample=n_sample,
                               sample_seed=sample_seed, demo_sampling=demo_sampling)
        if not n_anchor:
            return records, []
        taken = draw_demonstrations(dataset.train, k, seed, n_classes, demo_sampling)
        anchors = draw_anchors(dataset.train, n_anchor, seed, n_classes, taken)
        return records, [_anchor_record(records[0], ex, records[0]["prompt"], None) for ex in anchors]
    # Zero-shot records carry the sample, instruction and tail; the retrieved demonstrations go in between.
    base = random_demo_records(dataset, method, template, k=0, seed=seed, sample=sample, n_sample=n_sample,
                        sample_seed=sample_seed)
    chosen_template = template if template is not None else dataset.templates[method]
    instruction = dataset.instruction if template is None else ""
    anchors = draw_anchors(dataset.train, n_anchor, seed, n_classes) if n_anchor else []
    pool, short = retrieval_pool(dataset.train, seed, n_classes, demo_pool, anchors)
    words = dataset.label_words
    if short:  # an imbalanced dataset: the small classes give what they have
        print(f"--demo_pool {demo_pool}: " + "; ".join(
            f"class {words[c]!r} has {got} usable training examples for its share of {share}, all in the pool"
            for c, (share, got) in short.items()) + f" (pool of {len(pool)})")
    selector = make_selector(demos, pool, k, seed, n_classes, None, (), embed, cache_path)
    test_by_index = {ex.index: ex for ex in dataset.test}
    queries = [test_by_index[rec["index"]] for rec in base]
    chosen = selector(queries + anchors)

    def prompt_of(demo_list: List[Example]) -> str:
        pairs = [(ex.text, words[ex.label]) for ex in demo_list]
        return build_prompt_from_template(chosen_template, method, pairs, instruction)[0]

    meta = dict(base[0]["meta"], k=k, demos=demos, demo_pool=demo_pool)
    if short:
        meta["demo_pool_short"] = {words[c]: {"share": share, "drawn": got} for c, (share, got) in short.items()}
    records = [
        dict(rec, prompt=prompt_of(d), demo_indices=[ex.index for ex in d], meta=meta)
        for rec, d in zip(base, chosen)
    ]
    anchor_records = [
        _anchor_record(records[0], ex, prompt_of(d), [e.index for e in d])
        for ex, d in zip(anchors, chosen[len(queries):])
    ]
    return records, anchor_records


def _anchor_record(like: Dict[str, Any], ex: Example, prompt: str, demo_indices: Optional[List[int]]) -> Dict[str, Any]:
    rec = dict(like, prompt=prompt, text=ex.text, ground_truth=like["label_words"][ex.label], index=ex.index,
               meta=dict(like["meta"], split="train", anchor=True))
    if demo_indices is not None:
        rec["demo_indices"] = demo_indices
    return rec
