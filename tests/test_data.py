import csv
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from classification.inputs.ag_news import build_records, load_ag_news
from classification.inputs.sampling import Example, original_demonstrations, sample_test, select_demonstrations
from classification.inputs.sources import read_ag_news_csv
from classification.errors import ClassificationError
from classification.run.preprocess import preprocess
from classification.templates import AG_NEWS_LABEL_WORDS
from classification_fakes import synthetic_splits

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/ag_news"
needs_shared = pytest.mark.skipif(not (SHARED / "test.csv").is_file(), reason="shared ag_news data not present")


def write_csv(path: Path, rows):
    path.write_text("".join(",".join(f'"{c}"' for c in row) + "\n" for row in rows), encoding="utf-8")


def test_read_csv_joins_title_and_description(tmp_path):
    write_csv(tmp_path / "x.csv", [("3", "Title {x}", "Desc, with comma"), ("1", "T2", "D2")])
    ex = read_ag_news_csv(tmp_path / "x.csv")
    assert ex == [Example("Title {x} Desc, with comma", 2, 0), Example("T2 D2", 0, 1)]


@pytest.mark.parametrize("row, message", [(("5", "t", "d"), "class '5'"), (("1", "t"), "3 columns"), (("x", "t", "d"), "class 'x'")])
def test_read_csv_bad_rows(tmp_path, row, message):
    write_csv(tmp_path / "x.csv", [("1", "a", "b"), row])
    with pytest.raises(ClassificationError, match=message) as e:
        read_ag_news_csv(tmp_path / "x.csv")
    assert "x.csv:2" in str(e.value) and "\n" not in str(e.value)


def test_data_dir_without_files(tmp_path):
    write_csv(tmp_path / "train.csv", [("1", "a", "b")])
    with pytest.raises(ClassificationError, match=r"has no test\.csv"):
        load_ag_news(str(tmp_path))


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ClassificationError, match="--data_dir .*pip install datasets"):
        load_ag_news(None)


def test_demonstrations_stratified_seeded_and_shuffled():
    train, _ = synthetic_splits(n_train_per_class=5)
    demos = select_demonstrations(train, k=2, seed=42)
    assert Counter(d.label for d in demos) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert demos == select_demonstrations(train, k=2, seed=42)
    assert demos != select_demonstrations(train, k=2, seed=7)
    orders = {tuple(d.label for d in select_demonstrations(train, k=1, seed=s)) for s in range(10)}
    assert len(orders) > 1  # the order is shuffled, not class order
    assert select_demonstrations(train, k=0, seed=1) == []


def test_k_larger_than_smallest_class():
    train, _ = synthetic_splits(n_train_per_class=3)
    train = train[:-1]  # one class now has 2
    with pytest.raises(ClassificationError, match=r"--k 3 is larger than the smallest class .* has 2 .*--k 2"):
        select_demonstrations(train, k=3, seed=0)


def test_texts_with_placeholders_are_never_demonstrations():
    train = [Example("has {text} inside", 0, 0), Example("fine", 0, 1), Example("ok", 1, 2)]
    assert [d.text for d in select_demonstrations(train, 1, seed=3, n_classes=2) if d.label == 0] == ["fine"]


def test_test_sample_stratified_and_in_order():
    _, test = synthetic_splits(n_test_per_class=6)
    s = sample_test(test, n_sample=10, seed=1)
    assert Counter(e.label for e in s) == {0: 3, 1: 3, 2: 2, 3: 2}
    assert [e.index for e in s] == sorted(e.index for e in s)
    assert s == sample_test(test, n_sample=10, seed=1)
    with pytest.raises(ClassificationError, match="--n_sample 40"):
        sample_test(test, n_sample=40, seed=1)


def test_build_records_shape():
    train, test = synthetic_splits()
    for method, completion in (("direct", "{label_word}"), ("channel", "{text}")):
        recs = build_records(method, train, test, k=1, seed=3, sample=True, n_sample=8)
        assert len(recs) == 8
        r = recs[0]
        assert set(r) == {"prompt", "completion", "text", "label_words", "ground_truth", "index", "meta"}
        assert r["completion"] == completion
        assert r["label_words"] == list(AG_NEWS_LABEL_WORDS)
        assert r["ground_truth"] == AG_NEWS_LABEL_WORDS[test[r["index"]].label]
        assert r["text"] == test[r["index"]].text
        assert r["prompt"].count("Article:") == 5 and r["prompt"].count("Category:") == 5
    assert len(build_records("direct", train, test, sample=False)) == len(test)


@needs_shared
def test_shared_ag_news_loads():
    train, test = load_ag_news(str(SHARED))
    assert len(train) == 5590 and len(test) == 7600
    assert Counter(e.label for e in test) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert test[0].label == 2 and test[0].text.startswith("Fears for T N pension after talks Unions representing")


@needs_shared
def test_shared_preprocess_writes_records(tmp_path):
    out = tmp_path / "sub" / "inputs.json"
    preprocess("direct", str(out), sample=True, k=1, seed=42, data_dir=str(SHARED))
    recs = json.loads(out.read_text(encoding="utf-8"))
    assert len(recs) == 16
    assert Counter(r["ground_truth"] for r in recs) == {w: 4 for w in AG_NEWS_LABEL_WORDS}
    assert len({r["prompt"] for r in recs}) == 1
    assert [r["index"] for r in recs] == sorted(r["index"] for r in recs)
    # Same seed, same demonstrations and sample for channel.
    out2 = tmp_path / "channel.json"
    preprocess("channel", str(out2), sample=True, k=1, seed=42, data_dir=str(SHARED))
    recs2 = json.loads(out2.read_text(encoding="utf-8"))
    assert [r["index"] for r in recs2] == [r["index"] for r in recs]


# --- --demo_sampling original: the original's demonstrations -----------------------------------


def originals_prompt(method, rows, seed, label_words=AG_NEWS_LABEL_WORDS):
    """The prompt the original's preprocessing scripts build, written out as they do: the train rows
    as a HF dataset, its stratified train_test_split(train_size=4, seed, "label")["train"] as demonstrations."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
    dataset = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)
    demonstrations = dataset.train_test_split(train_size=4, seed=seed, stratify_by_column="label")["train"]
    prompt = ""
    for demo in demonstrations:
        input_prompt = f"Article: {demo['text']}\n"
        label_prompt = f"Category: {label_words[demo['label']]}\n"
        prompt += input_prompt + label_prompt if method == "direct" else label_prompt + input_prompt
    return prompt + ("Article: {text}\nCategory:" if method == "direct" else "Category: {label_word}\nArticle:")


@needs_shared
@pytest.mark.parametrize("seed", [42, 7])
def test_demo_sampling_original_rebuilds_the_originals_prompt(tmp_path, seed):
    pytest.importorskip("datasets")
    with open(SHARED / "train.csv", newline="", encoding="utf-8") as f:  # HF ag_news: text = title + " " + description
        rows = [(title + " " + description, int(cls) - 1) for cls, title, description in csv.reader(f)]
    for method in ("direct", "channel"):
        out = tmp_path / f"{method}.json"
        preprocess(method, str(out), k=1, seed=seed, data_dir=str(SHARED), n_sample=8, demo_sampling="original")
        recs = json.loads(out.read_text(encoding="utf-8"))
        assert {r["prompt"] for r in recs} == {originals_prompt(method, rows, seed)}
        assert recs[0]["meta"]["demo_sampling"] == "original"
    default = build_records("direct", *load_ag_news(str(SHARED)), k=1, seed=seed, n_sample=8)
    assert default[0]["prompt"] != recs[0]["prompt"] and "demo_sampling" not in default[0]["meta"]


def test_demo_sampling_original_with_k_per_class():
    datasets = pytest.importorskip("datasets")
    train, _ = synthetic_splits(n_train_per_class=5)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(num_classes=4)})
    table = datasets.Dataset.from_dict({"text": [e.text for e in train], "label": [e.label for e in train]}, features=features)
    for seed in (1, 2):
        want = table.train_test_split(train_size=8, seed=seed, stratify_by_column="label")["train"]
        got = original_demonstrations(train, k=2, seed=seed)
        assert [(e.text, e.label) for e in got] == [(row["text"], row["label"]) for row in want]
        assert Counter(e.label for e in got) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert original_demonstrations(train, k=0, seed=1) == []
    with pytest.raises(ClassificationError, match="cannot draw 24 demonstrations from the 20 examples") as e:
        original_demonstrations(train, k=6, seed=1)
    assert "\n" not in str(e.value)


def test_demo_sampling_original_without_datasets_and_bad_flags(tmp_path, monkeypatch):
    train, _ = synthetic_splits()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ClassificationError, match=r"^--demo_sampling original needs the `datasets` package: pip install datasets$"):
        original_demonstrations(train, k=1, seed=1)
    write_csv(tmp_path / "train.csv", [("1", "a", "b"), ("2", "c", "d")])
    write_csv(tmp_path / "test.csv", [("1", "e", "f")])
    with pytest.raises(ClassificationError, match="--demo_sampling 'orig' is not one of default, original"):
        preprocess("direct", str(tmp_path / "x.json"), data_dir=str(tmp_path), demo_sampling="orig")
    with pytest.raises(ClassificationError, match="--demo_sampling original applies to --demos random, not bm25"):
        preprocess("direct", str(tmp_path / "x.json"), data_dir=str(tmp_path), demo_sampling="original", demos="bm25")


@needs_shared
def test_default_demo_sampling_is_unchanged(tmp_path):
    """The default records are byte for byte those of the golden runs (written before --demo_sampling)."""
    golden = json.loads((Path(__file__).resolve().parent / "golden" / "runs.json").read_text())["records_sha256"]
    out = tmp_path / "inputs_direct_ag_news.json"
    preprocess("direct", str(out), data_dir=str(SHARED), n_sample=8, n_anchor=2)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == golden["inputs_direct_ag_news.json"]
    anchors = out.with_suffix(".anchors.json")
    assert hashlib.sha256(anchors.read_bytes()).hexdigest() == golden["inputs_direct_ag_news.anchors.json"]
    out2 = tmp_path / "default.json"
    preprocess("direct", str(out2), data_dir=str(SHARED), n_sample=8, n_anchor=2, demo_sampling="default")
    assert out2.read_bytes() == out.read_bytes()
