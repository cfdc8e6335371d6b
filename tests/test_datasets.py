"""Any dataset: presets on the offline copies, your own files and templates, the hub (faked), bad input."""

import hashlib
import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from classification.inputs.ag_news import build_records, load_ag_news
from classification.inputs.datasets import load_dataset, random_demo_records
from classification.inputs.presets import PRESETS
from classification.inputs.sampling import holdout_split, select_demonstrations
from classification.inputs.sources import label_index
from classification.errors import ClassificationError
from classification.run.preprocess import preprocess_dataset
from classification.templates import build_prompt_from_template, parse_template, unescape_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "sst2" / "test.csv").is_file(), reason="../shared/data not present")

# (rows in train pool, rows in test) of the offline copies, with the presets' hold-out sizes.
SIZES = {
    "ag_news": (5590, 7600), "sst2": (6920, 1821), "sst5": (8544, 2210), "trec": (5452, 500),
    "mr": (10662 - 2000, 2000), "cr": (3771 - 2000, 2000), "subj": (10000 - 2000, 2000), "dbpedia": (4000, 1000),
}


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# --- templates -------------------------------------------------------------------------------


def test_parse_template_reproduces_the_original_templates():
    # (demonstration, prompt tail, completion) of sh0416/llama-classification
    assert parse_template("Article: {text}\nCategory: {label_word}", "direct") == (
        "Article: {text}\nCategory: {label_word}\n", "Article: {text}\nCategory:", "{label_word}")
    assert parse_template("Category: {label_word}\nArticle: {text}", "channel") == (
        "Category: {label_word}\nArticle: {text}\n", "Category: {label_word}\nArticle:", "{text}")


def test_template_with_text_after_the_scored_part():
    demo, tail, completion = parse_template("{text} It was {label_word}.", "direct")
    assert (demo, tail, completion) == ("{text} It was {label_word}.\n", "{text} It was", "{label_word}.")
    prompt, comp = build_prompt_from_template("{text} It was {label_word}.", "direct", [("fun", "great")], "Go.\n")
    assert prompt == "Go.\nfun It was great.\n{text} It was" and comp == "{label_word}."


@pytest.mark.parametrize(
    "template, method, message",
    [
        ("Review: {text}\nSentiment:", "direct", "has 0 {label_word}"),
        ("Sentiment: {label_word}", "channel", "has 0 {text}"),
        ("{text} {text} {label_word}", "direct", "has 2 {text}"),
        ("Sentiment: {label_word}\nReview: {text}", "direct", "puts {text} before {label_word}"),
        ("Review: {text}\nSentiment: {label_word}", "channel", "puts {label_word} before {text}"),
    ],
)
def test_bad_templates_are_one_line_errors(template, method, message):
    with pytest.raises(ClassificationError, match=message.replace("{", r"\{").replace("}", r"\}")) as e:
        parse_template(template, method)
    assert "\n" not in str(e.value)


def test_cli_escapes():
    assert unescape_cli("Review: {text}\\nSentiment: {label_word}") == "Review: {text}\nSentiment: {label_word}"


# --- presets on the offline copies -----------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_preprocesses_from_the_local_copy(tmp_path, preset):
    data = load_dataset(preset=preset, data_dir=str(SHARED / preset))
    assert (len(data.train), len(data.test)) == SIZES[preset]
    words = list(PRESETS[preset].label_words)
    assert data.label_words == words and set(e.label for e in data.test) == set(range(len(words)))
    n = len(words)
    for method in ("direct", "channel"):
        out = tmp_path / f"{method}.json"
        recs = preprocess_dataset(preset=preset, method=method, data_path=str(out), k=1, seed=3, n_sample=2 * n,
                                  data_dir=str(SHARED / preset))
        assert json.loads(out.read_text(encoding="utf-8")) == recs
        assert len(recs) == 2 * n and Counter(r["ground_truth"] for r in recs) == {w: 2 for w in words}
        r = recs[0]
        assert r["label_words"] == words and r["meta"] == {"dataset": preset, "method": method, "k": 1, "seed": 3,
                                                          "sample_seed": 3,
                                                          "template": PRESETS[preset].templates[method],
                                                          "sources_sha256": source_digests(SHARED / preset)}
        assert r["prompt"].startswith(PRESETS[preset].instruction)
        tail, completion = parse_template(PRESETS[preset].templates[method], method)[1:]
        assert r["prompt"].endswith(tail) and r["completion"] == completion
        assert len({x["prompt"] for x in recs}) == 1
        # One demonstration per class, each with its class's label word.
        demos = r["prompt"][len(PRESETS[preset].instruction): -len(tail)]
        assert demos.count("\n") >= n and all(w in demos for w in words)
        texts = {ex.text: ex.label for ex in data.test}
        assert all(words[texts[x["text"]]] == x["ground_truth"] for x in recs)


@needs_shared
def source_digests(folder):
    """sha256 of a dataset folder's files, by name (what its records say they were made from)."""
    names = ("train.csv", "test.csv", "all.csv", "labels.txt")  # the presets' files (all.csv: one split to hold out)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name in names}


def test_ag_news_preset_is_the_original_ag_news_records():
    """The original's prompt layout, written out by hand from the chosen demonstrations."""
    train, test = load_ag_news(str(SHARED / "ag_news"))
    data = load_dataset(preset="ag_news", data_dir=str(SHARED / "ag_news"))
    words = ["World", "Sports", "Business", "Science and technology"]
    demos = select_demonstrations(train, 2, 5, 4)
    expected = {
        "direct": ("".join(f"Article: {ex.text}\nCategory: {words[ex.label]}\n" for ex in demos)
                   + "Article: {text}\nCategory:", "{label_word}"),
        "channel": ("".join(f"Category: {words[ex.label]}\nArticle: {ex.text}\n" for ex in demos)
                    + "Category: {label_word}\nArticle:", "{text}"),
    }
    for method in ("direct", "channel"):
        got = random_demo_records(data, method, k=2, seed=5, n_sample=20)
        # The records of rows given in memory record no source files; the preset's record its files.
        assert got[0]["meta"].pop("sources_sha256") == source_digests(SHARED / "ag_news")
        assert got == build_records(method, train, test, k=2, seed=5, n_sample=20)
        assert len(got) == 20 and {r["ground_truth"] for r in got} == set(words)
        for r in got:
            assert (r["prompt"], r["completion"]) == expected[method]
            assert r["label_words"] == words and r["text"] == test[r["index"]].text


@needs_shared
@pytest.mark.parametrize("preset", ["mr", "cr", "subj", "dbpedia"])
def test_holdout_split_is_seeded_disjoint_and_independent_of_demo_seed(preset):
    a = load_dataset(preset=preset, data_dir=str(SHARED / preset))
    b = load_dataset(preset=preset, data_dir=str(SHARED / preset))
    c = load_dataset(preset=preset, data_dir=str(SHARED / preset), split_seed=1)
    assert [e.index for e in a.test] == [e.index for e in b.test] != [e.index for e in c.test]
    assert not {e.index for e in a.train} & {e.index for e in a.test}
    # Demonstration seeds change demonstrations only: the test sample stays with sample_seed.
    r1 = random_demo_records(a, "direct", seed=1, n_sample=10, sample_seed=0)
    r2 = random_demo_records(a, "direct", seed=2, n_sample=10, sample_seed=0)
    assert [r["index"] for r in r1] == [r["index"] for r in r2] and r1[0]["prompt"] != r2[0]["prompt"]
    test_texts = {e.text for e in a.test}
    demo_lines = [line.split(": ", 1)[-1] for line in r1[0]["prompt"].split("\n")[:-2]]
    assert len(demo_lines) >= 4 and not any(line in test_texts for line in demo_lines)


def test_holdout_split_by_hand():
    from classification.inputs.sampling import Example

    exs = [Example(str(i), i % 2, i) for i in range(10)]
    train, test = holdout_split(exs, 3, split_seed=0, what="x")
    assert len(train) == 7 and len(test) == 3 and sorted(e.index for e in train + test) == list(range(10))
    with pytest.raises(ClassificationError, match="--test_size"):
        holdout_split(exs, 10, 0, "x")
    with pytest.raises(ClassificationError, match="no test split; pass --test_size"):
        holdout_split(exs, None, 0, "x")


# --- your own files ----------------------------------------------------------------------------


def write_csv(path, rows, header=("label", "text")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def own_rows(n=6):
    return [(i % 2, f"review {i} {'bad' if i % 2 == 0 else 'good'} film") for i in range(n)]


def test_dataset_from_file_paths_and_a_template(tmp_path):
    write_csv(tmp_path / "a.csv", own_rows(8))
    write_csv(tmp_path / "b.csv", own_rows(4))
    out = tmp_path / "in.json"
    p = run("run_preprocess.py", "--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"),
            "--label_words", '["bad","good"]', "--template", "Review: {text}\\nSentiment: {label_word}",
            "--data_path", str(out), "--n_sample", "0", "--k", "2")
    assert p.returncode == 0, p.stderr
    recs = json.loads(out.read_text())
    assert len(recs) == 4 and recs[0]["prompt"].endswith("\nReview: {text}\nSentiment:")
    assert recs[0]["prompt"].count("Sentiment: bad\n") == 2 and recs[0]["completion"] == "{label_word}"
    assert recs[0]["meta"]["dataset"] == tmp_path.name
    assert [r["ground_truth"] for r in recs] == ["bad", "good", "bad", "good"]


def test_json_jsonl_string_labels_and_several_text_columns(tmp_path):
    rows = [{"title": f"t{i}", "body": f"b{i}", "y": ["neg", "pos"][i % 2]} for i in range(6)]
    (tmp_path / "train.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n", encoding="utf-8")
    data = load_dataset(train=str(tmp_path / "train.json"), test=str(tmp_path / "test.jsonl"),
                        text_column=["title", "body"], label_column="y", label_words=["NEG", "POS"])
    assert [(e.text, e.label) for e in data.test] == [("t0 b0", 0), ("t1 b1", 1), ("t2 b2", 0), ("t3 b3", 1)]
    # labels.txt beside the files gives the label words; one file alone is split with --test_size.
    write_csv(tmp_path / "all.csv", own_rows(10))
    (tmp_path / "labels.txt").write_text("bad\ngood\n")
    data = load_dataset(train=str(tmp_path / "all.csv"), test_size=4)
    assert data.label_words == ["bad", "good"] and (len(data.train), len(data.test)) == (6, 4)
    recs = random_demo_records(data, "channel", k=1, seed=0, n_sample=2)
    assert recs[0]["prompt"].endswith("Label: {label_word}\nInput:")  # the generic default template


def test_label_values_outside_the_label_words(tmp_path):
    write_csv(tmp_path / "a.csv", own_rows(4) + [(2, "three")])
    with pytest.raises(ClassificationError, match=r"a\.csv:6: label '2' is outside the 2 label words") as e:
        load_dataset(train=str(tmp_path / "a.csv"), test=str(tmp_path / "a.csv"), label_words=["bad", "good"])
    assert "\n" not in str(e.value)
    with pytest.raises(ClassificationError, match="label 'meh' is outside the label words"):
        label_index("meh", ["bad", "good"], [], "x")
    assert label_index(" Good ", ["bad", "good"], [], "x") == 1 and label_index(1.0, ["a", "b"], [], "x") == 1
    assert label_index("Sci/Tech", PRESETS["ag_news"].label_words, PRESETS["ag_news"].label_names, "x") == 3
    p = run("run_preprocess.py", "--train", str(tmp_path / "a.csv"), "--test", str(tmp_path / "a.csv"),
            "--label_words", '["bad","good"]', "--data_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "outside the 2 label words" in p.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "imdb"], "error: unknown preset 'imdb'; use one of ag_news, sst2"),
        (["--preset", "sst2", "--template", "Review: {text}"], "error: template 'Review: {text}' has 0 {label_word}"),
        (["--preset", "sst2", "--template", "Sentiment: {label_word}"],
         "error: template 'Sentiment: {label_word}' has 0 {text}"),
        (["--preset", "sst2", "--method", "generate"], "error: --method 'generate' is not one of direct, channel"),
        ([], "error: give --preset"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    p = run("run_preprocess.py", *args, "--data_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith(message) and p.stderr.count("\n") == 1


@needs_shared
def test_preset_errors(tmp_path):
    with pytest.raises(ClassificationError, match=r"--data_dir .* has no all\.csv"):
        load_dataset(preset="mr", data_dir=str(SHARED / "sst2"))
    with pytest.raises(ClassificationError, match="labels.txt lists 2 classes but there are 5 label words"):
        load_dataset(preset="sst5", data_dir=str(SHARED / "sst2"))
    with pytest.raises(ClassificationError, match="--k 100 is larger than the smallest class .* has 86"):
        random_demo_records(load_dataset(preset="trec", data_dir=str(SHARED / "trec")), "direct", k=100)


# --- the hub (a fake `datasets` module: no network) -------------------------------------------


class FakeSplit(list):
    def __init__(self, rows, names=None):
        super().__init__(rows)
        self.features = {"label": types.SimpleNamespace(names=names)} if names else {}


def fake_datasets(monkeypatch, splits, calls):
    module = types.ModuleType("datasets")

    def load(name, config=None):
        calls.append((name, config))
        if name == "missing":
            raise FileNotFoundError("Dataset 'missing' doesn't exist on the Hub\nmore detail")
        return splits

    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_dataset_with_classlabel_names(monkeypatch):
    rows = [{"sentence": f"s{i}", "label": i % 3} for i in range(9)]
    calls = []
    fake_datasets(monkeypatch, {"train": FakeSplit(rows, ["a", "b", "c"]), "validation": FakeSplit(rows[:3])}, calls)
    data = load_dataset(hub="org/set:cfg", test="validation", text_column="sentence")
    assert calls == [("org/set", "cfg")] and data.name == "set" and data.label_words == ["a", "b", "c"]
    assert [e.text for e in data.test] == ["s0", "s1", "s2"]
    with pytest.raises(ClassificationError, match="has no split 'test' \\(splits: train, validation\\)"):
        load_dataset(hub="org/set", text_column="sentence")
    with pytest.raises(ClassificationError, match="cannot load 'missing' from the Hugging Face hub: Dataset") as e:
        load_dataset(hub="missing")
    assert "\n" not in str(e.value)


def test_preset_without_data_dir_reads_its_hub_id(monkeypatch):
    rows = [{"text": f"t{i}", "label_text": ["negative", "positive"][i % 2]} for i in range(6)]
    calls = []
    fake_datasets(monkeypatch, {"train": FakeSplit(rows), "test": FakeSplit(rows)}, calls)
    data = load_dataset(preset="sst2")
    assert calls == [("SetFit/sst2", None)] and data.label_words == ["Negative", "Positive"]
    assert [e.label for e in data.test] == [0, 1, 0, 1, 0, 1]


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ClassificationError, match="needs the `datasets` package"):
        load_dataset(preset="trec")


def test_non_utf8_ag_news_csv_and_labels_txt_are_one_line_errors(tmp_path):
    good = '"1","Title","Body"\n"2","Other","Text"\n"3","More","Words"\n"4","Last","One"\n'
    (tmp_path / "train.csv").write_text(good)
    (tmp_path / "test.csv").write_bytes(good.encode() + b'"1","Caf\xe9","latin-1 bytes"\n')
    p = run("run_preprocess_direct_ag_news.py", "--data_dir", str(tmp_path), "--data_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "test.csv: not UTF-8" in p.stderr
    (tmp_path / "a.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    (tmp_path / "labels.txt").write_bytes(b"n\xe9gatif\npositif\n")
    with pytest.raises(ClassificationError, match=r"labels\.txt: not UTF-8"):
        load_dataset(train=str(tmp_path / "a.csv"), test=str(tmp_path / "a.csv"))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    (tmp_path / "a.csv").write_bytes("\ufefftext,label\ngood film,1\nbad film,0\n".encode("utf-8"))
    (tmp_path / "labels.txt").write_bytes("\ufeffbad\ngood\n".encode("utf-8"))
    ds = load_dataset(train=str(tmp_path / "a.csv"), test=str(tmp_path / "a.csv"))
    assert [ex.text for ex in ds.test] == ["good film", "bad film"] and ds.label_words == ["bad", "good"]


def test_a_broken_jsonl_line_is_reported_by_its_file_line(tmp_path):
    rows = ['{"text": "good", "label": 1}', "", '{"text": "bad", "label": 0}', '{"text": "oops" "label": 0}']
    (tmp_path / "a.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ClassificationError, match=r"invalid JSON at line 4 column 17"):
        load_dataset(train=str(tmp_path / "a.jsonl"), test=str(tmp_path / "a.jsonl"), label_words=["bad", "good"])


def test_local_parquet_files(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": ["good film", "bad film", "great", "awful"], "y": [1, 0, 1, 0]}),
                   tmp_path / "train.parquet")
    ds = load_dataset(train=str(tmp_path / "train.parquet"), test=str(tmp_path / "train.parquet"),
                      text_column="sentence", label_column="y", label_words=["bad", "good"])
    assert [(ex.text, ex.label) for ex in ds.test] == [("good film", 1), ("bad film", 0), ("great", 1), ("awful", 0)]


def test_parquet_without_datasets_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(ClassificationError, match="parquet needs the `datasets` package"):
        load_dataset(train=str(tmp_path / "train.parquet"), test=str(tmp_path / "train.parquet"), label_words=["a", "b"])


@pytest.mark.parametrize("name, content, cause", [
    ("a.json", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    ("a.jsonl", '{"text": "x", "label": ' + "1" * 5000 + "}\n", "unreadable JSON (Exceeds the limit (4300 digits)"),
])
def test_deep_or_huge_number_json_rows_are_one_line(tmp_path, name, content, cause):
    (tmp_path / name).write_text(content)
    with pytest.raises(ClassificationError) as e:
        load_dataset(train=str(tmp_path / name), test=str(tmp_path / name), label_words=["bad", "good"])
    assert str(e.value).startswith(f"{tmp_path / name}: {cause}") and "\n" not in str(e.value)


def test_preprocess_never_writes_over_its_own_input_files(tmp_path):
    import os

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", own_rows(8))
    write_csv(data / "test.csv", own_rows(4))
    (data / "labels.txt").write_text("bad\ngood\n")
    (data / "pool.anchors.json").write_text(json.dumps([{"label": label, "text": text} for label, text in own_rows(8)]))
    os.link(data / "test.csv", tmp_path / "alias.csv")  # the test file under another name
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    cases = [
        (dict(train=str(data / "train.csv"), test=str(data / "test.csv"), data_path=str(data / "train.csv")),
         "train.csv"),
        (dict(train=str(data / "train.csv"), test=str(data / "test.csv"), data_path=str(data / ".." / "data" / "test.csv")),
         "test.csv"),
        (dict(train=str(data / "train.csv"), test=str(data / "test.csv"), data_path=str(tmp_path / "alias.csv")),
         "test.csv"),
        (dict(data_dir=str(data), data_path=str(data / "labels.txt")), "labels.txt"),
        # the anchors file written beside the records
        (dict(train=str(data / "pool.anchors.json"), test=str(data / "test.csv"), data_path=str(data / "pool.json"),
              n_anchor=1), "pool.anchors.json"),
    ]
    for kwargs, victim in cases:
        with pytest.raises(ClassificationError) as e:
            preprocess_dataset(method="direct", k=1, n_sample=2, **kwargs)
        message = str(e.value)
        assert "would overwrite an input file (the dataset file" in message and victim in message, message
        assert "\n" not in message
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
