"""Demonstrations per input (bm25, knn), anchors, and the records they make."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classification.inputs import retrieval
from classification.inputs.sampling import Example
from classification.inputs.datasets import Dataset, get_preset, load_dataset, random_demo_records
from classification.errors import ClassificationError
from classification.fileio import write_json_atomic
from classification.paths import anchors_path
from classification.run.preprocess import preprocess_dataset
from classification_fakes import FakeLM, synthetic_splits

ROOT = Path(__file__).resolve().parents[1]

# Two classes; every text has its own rare words, so BM25's ranking is fixed by which words a query shares.
POOL = [
    Example("apple banana", 0, 0),
    Example("cherry date", 0, 1),
    Example("elder fig", 0, 2),
    Example("grape honeydew", 1, 3),
    Example("kiwi lemon", 1, 4),
    Example("mango nectarine", 1, 5),
]


def texts(examples):
    return [ex.text for ex in examples]


def dataset(train, test):
    p = get_preset("ag_news")
    return Dataset("ag_news", list(train), list(test), list(p.label_words), dict(p.templates), p.instruction)


def test_bm25_picks_the_documented_neighbours_most_similar_last():
    queries = [Example("cherry kiwi lemon", 0, 0), Example("fig", 1, 1), Example("nothing shared", 0, 2)]
    select = retrieval.make_selector("bm25", POOL, k=1, seed=0, n_classes=2)
    got = [texts(d) for d in select(queries)]
    # "kiwi lemon" shares two words, "cherry date" one: the better match comes last.
    assert got[0] == ["cherry date", "kiwi lemon"]
    # Only "elder fig" matches; class 1 has no match: its first example wins the tie and goes first.
    assert got[1] == ["grape honeydew", "elder fig"]
    # No word in common: the first example of each class; equal scores, the earlier one last.
    assert got[2] == ["grape honeydew", "apple banana"]
    two = retrieval.make_selector("bm25", POOL, k=2, seed=0, n_classes=2)([queries[0]])[0]
    assert texts(two)[-2:] == ["cherry date", "kiwi lemon"] and len(two) == 4


def test_a_text_is_never_its_own_demonstration():
    select = retrieval.make_selector("bm25", POOL, k=1, seed=0, n_classes=2)
    got = texts(select([Example("cherry  date", 0, 9)])[0])  # same text up to whitespace
    assert "cherry date" not in got and len(got) == 2


def test_knn_picks_the_nearest_by_cosine():
    # Hand-made 2-d embeddings; the query (0.6, 0.8) has cosine 0.6, 0.96, -0.28 with class 0's
    # vectors and 0.8, -0.6, 0.0 with class 1's (the scale of a vector does not matter).
    vec = {"apple banana": (1, 0), "cherry date": (8, 6), "elder fig": (0.6, -0.8),
           "grape honeydew": (0, 1), "kiwi lemon": (-1, 0), "mango nectarine": (1, -1), "q": (0.6, 0.8)}
    calls = []

    def embed(batch):
        calls.append(list(batch))
        return np.array([vec[t] for t in batch], dtype=np.float32)

    select = retrieval.make_selector("knn", POOL, k=2, seed=0, n_classes=2, embed=embed)
    got = texts(select([Example("q", 0, 0)])[0])
    # Per class the 2 best: class 0 cherry (0.96), apple (0.6); class 1 grape (0.8), mango (-0.14).
    assert got == ["mango nectarine", "apple banana", "grape honeydew", "cherry date"]


def test_knn_embeddings_are_cached_beside_the_records(tmp_path):
    train, test = synthetic_splits(5, 3)
    lm = FakeLM()
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return lm.text_embeddings(batch)

    cache = tmp_path / "embeddings.fake.npz"
    first, _ = retrieval.records_and_anchors(dataset(train, test), "direct", None, 1, 1, True, 8, 0, "knn",
                                             embed=embed, cache_path=cache)
    again, _ = retrieval.records_and_anchors(dataset(train, test), "direct", None, 1, 2, True, 8, 0, "knn",
                                             embed=embed, cache_path=cache)
    assert calls == [len(train) + 8]  # the second seed embedded nothing new, and retrieved the same
    assert [(r["prompt"], r["demo_indices"]) for r in first] == [(r["prompt"], r["demo_indices"]) for r in again]
    # Each record's demonstrations are its nearest by the fake embedding (bag of hashed words).
    vecs = lm.text_embeddings([ex.text for ex in train])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for rec in first:
        q = lm.text_embeddings([rec["text"]])[0]
        sims = vecs @ (q / np.linalg.norm(q))
        for index in rec["demo_indices"]:
            label = train[index].label
            same = [i for i, ex in enumerate(train) if ex.label == label]
            assert sims[index] == pytest.approx(max(sims[same]))
        assert rec["prompt"].count("Article:") == 5 and rec["meta"]["demos"] == "knn"


def test_random_demos_write_the_same_bytes_as_before(tmp_path, shared_data):
    data_dir = str(shared_data / "sst2")
    path = tmp_path / "new.json"
    preprocess_dataset(preset="sst2", data_dir=data_dir, data_path=str(path), k=2, seed=3, n_sample=20)
    with_anchors = tmp_path / "anchored.json"
    preprocess_dataset(preset="sst2", data_dir=data_dir, data_path=str(with_anchors), k=2, seed=3, n_sample=20,
                       demos="random", n_anchor=5)
    old = random_demo_records(load_dataset(preset="sst2", data_dir=data_dir), "direct", k=2, seed=3, n_sample=20)
    write_json_atomic(str(tmp_path / "old.json"), old, indent=2)
    assert path.read_bytes() == (tmp_path / "old.json").read_bytes() == with_anchors.read_bytes()
    anchors = json.loads(Path(anchors_path(str(with_anchors))).read_text())
    assert [a["ground_truth"] for a in anchors].count("Negative") == 5 and len(anchors) == 10
    assert {a["prompt"] for a in anchors} == {old[0]["prompt"]}
    # Anchors are neither demonstrations nor each other's duplicates.
    assert all(a["text"] not in old[0]["prompt"] for a in anchors)
    assert len({a["index"] for a in anchors}) == 10


def test_retrieved_anchors_never_serve_as_demonstrations():
    train, test = synthetic_splits(6, 3)
    records, anchors = retrieval.records_and_anchors(dataset(train, test), "direct", None, 1, 1, True, 8, 0, "bm25",
                                                     n_anchor=2)
    anchor_ids = {a["index"] for a in anchors}
    assert len(anchors) == 8 and all(a["meta"]["anchor"] for a in anchors)
    for rec in records + anchors:
        assert not anchor_ids & set(rec["demo_indices"])
        for i in rec["demo_indices"]:
            assert train[i].text in rec["prompt"]
    # A record's demonstrations are one per class.
    assert all(sorted(train[i].label for i in rec["demo_indices"]) == [0, 1, 2, 3] for rec in records)


def test_demo_pool_bounds_the_pool_and_follows_the_seed():
    train, _ = synthetic_splits(10, 1)
    queries = train[:3]
    picked = []
    for seed in (1, 2):
        select = retrieval.make_selector("bm25", train, k=1, seed=seed, n_classes=4, demo_pool=8)
        picked.append({ex.index for demos in select(queries) for ex in demos})
    assert all(len(p) <= 8 for p in picked) and picked[0] != picked[1]


def test_bad_retrieval_input_is_one_line(tmp_path):
    with pytest.raises(ClassificationError, match=r"--k 4 is larger than the smallest class of the retrieval pool"):
        retrieval.make_selector("bm25", POOL, k=4, seed=0, n_classes=2)
    with pytest.raises(ClassificationError, match="--embedder .* does not exist"):
        retrieval.check_demos("knn", None, str(tmp_path / "no-model"), 0)
    with pytest.raises(ClassificationError, match="--demos 'topk' is not one of random, bm25, knn"):
        retrieval.check_demos("topk", None, None, 0)
    p = subprocess.run([sys.executable, "run_preprocess.py", "--preset", "sst2", "--demos", "knn", "--embedder",
                        str(tmp_path / "no-model"), "--data_path", str(tmp_path / "x.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: --embedder {tmp_path / 'no-model'} does not exist; "
                                             "pass a local sentence-transformers model"]


def write_splits(folder):
    import csv

    train, test = synthetic_splits(5, 2)
    for name, split in (("train.csv", train), ("test.csv", test)):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["label", "text"])
            w.writerows([ex.label, ex.text] for ex in split)
    return dict(train=str(folder / "train.csv"), test=str(folder / "test.csv"),
                label_words=list(get_preset("ag_news").label_words))


class FlatLM(FakeLM):
    """Another model: every text embeds alike, so ties pick each class's earliest examples."""

    def text_embeddings(self, texts):
        return np.ones((len(texts), 64), dtype=np.float32)


def test_knn_cache_follows_the_model_files_not_their_path(tmp_path, monkeypatch):
    from classification.run import preprocess as preprocess_module

    splits = write_splits(tmp_path)
    ckpt, tok = tmp_path / "ckpt", tmp_path / "tokenizer.json"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"A" * 256)
    tok.write_text("{}")
    models = {b"A" * 256: FakeLM, b"B" * 256: FlatLM}  # the "weights" decide which model loads
    loads = []

    def load_lm(ckpt_dir, *args, **kwargs):
        loads.append(ckpt_dir)
        return models[(Path(ckpt_dir) / "weights.bin").read_bytes()]()

    monkeypatch.setattr(preprocess_module, "load_lm", load_lm)

    def preprocess(out):
        return preprocess_dataset(method="direct", data_path=str(out), k=1, seed=1, n_sample=0, demos="knn",
                                  ckpt_dir=str(ckpt), tokenizer_path=str(tok), **splits)

    first = preprocess(tmp_path / "a" / "in.json")
    assert preprocess(tmp_path / "a" / "in.json") == first and len(loads) == 1  # cached: no model needed
    (ckpt / "weights.bin").write_bytes(b"B" * 256)  # rewritten in place: same path, same size
    changed = preprocess(tmp_path / "a" / "in.json")
    assert len(loads) == 2  # embedded again, with the new weights
    fresh = preprocess(tmp_path / "b" / "in.json")  # what the new weights choose without any cache
    assert changed == fresh and changed != first
    assert len(list((tmp_path / "a").glob("embeddings.*.npz"))) == 2  # one cache per content


@pytest.mark.parametrize("damage, cause", [
    (lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "not a readable embeddings cache"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable embeddings cache"),
    (lambda p: np.savez(p, keys=np.array(["a", "b"]), vectors=np.zeros((3, 4), np.float32)), "a list of keys and"),
    (lambda p: np.savez(p, keys=np.array(["a"]), vectors=np.zeros(4, np.float32)), "a list of keys and"),
    (lambda p: np.savez(p, vectors=np.zeros((1, 4), np.float32)), "not a readable embeddings cache"),
    (lambda p: np.savez(p, keys=np.array(["a"]), vectors=np.full((1, 64), np.nan, np.float32)), "NaN"),
    (lambda p: np.savez(p, keys=np.array(["a"]), vectors=np.ones((1, 7), np.float32),
                        made_from=np.array('{"embedder": "fake"}')), "7-dimensional"),
    # another embedder's cache under this one's name (copied, renamed), or one that records none
    (lambda p: np.savez(p, keys=np.array(["a"]), vectors=np.ones((1, 64), np.float32),
                        made_from=np.array('{"embedder": "other-0123456789ab"}')), "embedder 'other-0123456789ab'"),
    (lambda p: np.savez(p, keys=np.array(["a"]), vectors=np.ones((1, 64), np.float32)), "embedder None, not of 'fake'"),
])
def test_damaged_or_wrong_shaped_embeddings_cache_is_one_line(tmp_path, damage, cause):
    train, test = synthetic_splits(5, 3)
    cache = tmp_path / "embeddings.fake.npz"
    retrieval.records_and_anchors(dataset(train, test), "direct", None, 1, 1, True, 8, 0, "knn",
                            embed=FakeLM().text_embeddings, cache_path=cache)
    damage(cache)
    with pytest.raises(ClassificationError) as e:
        retrieval.records_and_anchors(dataset(train, test), "direct", None, 1, 1, True, 8, 0, "knn",
                                embed=FakeLM().text_embeddings, cache_path=cache)
    message = str(e.value)
    assert message.startswith(str(cache)) and cause in message and message.endswith("delete it to embed the texts again")


@pytest.mark.parametrize("demos", ["bm25", "knn"])
def test_demo_pool_on_an_imbalanced_dataset_takes_what_a_small_class_has(demos, capsys):
    """A class with fewer training examples than its share of --demo_pool gives all it has (as
    trec's abbreviation questions): one printed line and the records' meta say so."""
    train, test = synthetic_splits(12, 2)
    small = [ex for ex in train if ex.label == 0][:5]  # anchors take 2 of them: 3 left for the pool
    train = [Example(ex.text, ex.label, i) for i, ex in enumerate(
        [ex for ex in train if ex.label != 0] + small)]
    p = get_preset("ag_news")
    data = Dataset("ag_news", train, test, list(p.label_words), dict(p.templates), p.instruction)
    embed = lambda texts: FakeLM().text_embeddings(texts)  # noqa: E731
    records, anchors = retrieval.records_and_anchors(data, "direct", None, 1, 3, False, 0, None, demos,
                                                     demo_pool=24, n_anchor=2, embed=embed)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "--demo_pool 24: class 'World' has 3 usable training examples for its share " \
        "of 6, all in the pool (pool of 21)" in out
    assert records[0]["meta"]["demo_pool_short"] == {"World": {"share": 6, "drawn": 3}}
    anchor_ids = {a["index"] for a in anchors}
    world = {ex.index for ex in train if ex.label == 0} - anchor_ids
    used = {i for r in records for i in r["demo_indices"]}
    assert world & used and used <= {ex.index for ex in train} - anchor_ids
    pool, short = retrieval.retrieval_pool(train, 3, 4, 24, [ex for ex in train if ex.index in anchor_ids])
    assert short == {0: (6, 3)} and len(pool) == 21 and sum(ex.label == 0 for ex in pool) == 3
    # A balanced pool is drawn as before, and says nothing.
    before = retrieval.retrieval_pool(train, 3, 4, 8)
    assert before[1] == {} and len(before[0]) == 8
    with pytest.raises(ClassificationError, match="--k 4 is larger than the smallest class of the retrieval pool"):
        retrieval.records_and_anchors(data, "direct", None, 4, 3, False, 0, None, demos, demo_pool=24, n_anchor=2,
                                      embed=embed)
