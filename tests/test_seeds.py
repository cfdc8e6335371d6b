"""Seeds: one command over several demonstration seeds, per-seed files, mean ± std; then the report."""

import ast
import csv
import hashlib
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from classification.errors import ClassificationError
from classification.report.markdown import build_report, load_runs
from classification.metrics import mean_std
from classification.run.seeds import SEED_METHODS, check_methods, load_spec, run_seeds
from classification_fakes import FakeLM

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("world", "sports", "business", "science")
WORDS = ["World", "Sports", "Business", "Science"]


def write_split(path, n_per_class, tag):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["topic", "text"])
        for i in range(n_per_class * 4):
            label = (i * 3) % 4
            # Every 5th text names no topic: the fake model then guesses, so seeds differ.
            word = TOPICS[label] if i % 5 else "things"
            w.writerow([label, f"{tag} {i} about {word} " + " ".join(f"w{i}x{j}" for j in range(i % 4))])


@pytest.fixture
def spec(tmp_path):
    write_split(tmp_path / "tr.csv", 6, "train")
    write_split(tmp_path / "te.csv", 5, "test")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({
        "train": str(tmp_path / "tr.csv"), "test": str(tmp_path / "te.csv"), "label_column": "topic",
        "label_words": WORDS, "name": "topics",
        "templates": {"direct": "Article: {text}\\nCategory: {label_word}",
                      "channel": "Category: {label_word}\nArticle: {text}"},
    }))
    return str(path)


def test_seeds_per_seed_files_and_mean_std(tmp_path, spec, capsys):
    out = tmp_path / "runs"
    lm = FakeLM()
    summary = run_seeds(spec, seeds=[1, 2, 3], n_sample=12, out_dir=str(out), lm=lm)
    assert list(summary["methods"]) == ["direct", "direct+na", "direct+cbu", "direct+dcpmi", "direct+batch",
                                        "channel", "generate"]
    for seed in (1, 2, 3):
        names = sorted(p.name for p in (out / f"seed{seed}").iterdir())
        assert names == sorted(["inputs_direct.json", "inputs_channel.json"]
                               + [f"outputs_{m}{ext}" for m in SEED_METHODS for ext in (".json", ".metrics.json")])
        recs = json.loads((out / f"seed{seed}" / "inputs_direct.json").read_text())
        assert recs[0]["meta"] == {"dataset": "topics", "method": "direct", "k": 1, "seed": seed, "sample_seed": 0,
                                   "template": "Article: {text}\nCategory: {label_word}",
                                   "sources_sha256": {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
                                                      for name in ("tr.csv", "te.csv")}}
        assert recs[0]["prompt"].endswith("Article: {text}\nCategory:")
    # Same test sample for every seed, different demonstrations.
    inputs = [json.loads((out / f"seed{s}" / "inputs_direct.json").read_text()) for s in (1, 2, 3)]
    assert len({tuple(r["index"] for r in recs) for recs in inputs}) == 1
    assert len({recs[0]["prompt"] for recs in inputs}) == 3
    # mean ± std against the per-seed metrics files.
    for method, label in (("direct", "direct"), ("channel", "channel"), ("batch", "direct+batch")):
        files = [out / f"seed{s}" / f"outputs_{method}.metrics.json" for s in (1, 2, 3)]
        accs = [json.loads(f.read_text())["accuracy"] for f in files]
        entry = summary["methods"][label]
        assert [r["accuracy"] for r in entry["per_seed"]] == accs
        assert entry["accuracy"]["mean"] == pytest.approx(sum(accs) / 3)
        assert entry["accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        # Each number names the output it is from, by content.
        outputs = [out / f"seed{s}" / f"outputs_{method}.json" for s in (1, 2, 3)]
        assert [r["output_sha256"] for r in entry["per_seed"]] == [
            hashlib.sha256(f.read_bytes()).hexdigest() for f in outputs]
    made_from = summary["made_from"]
    assert made_from["sources_sha256"] == recs[0]["meta"]["sources_sha256"]
    assert made_from["max_seq_len"] == 2048 and "model_files" in made_from and "quantize" in made_from
    assert summary["methods"]["generate"]["ece"] == {"mean": None, "std": None}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    table = (out / "summary.md").read_text()
    assert "| method | seed 1 | seed 2 | seed 3 | accuracy | macro-F1 | ECE |" in table and "±" in table
    # Run again: everything is reused, nothing is scored.
    lm2 = FakeLM()
    again = run_seeds(spec, seeds=[1, 2, 3], n_sample=12, out_dir=str(out), lm=lm2)
    assert lm2.calls == 0 and again["methods"] == summary["methods"]
    assert "Up to date" in capsys.readouterr().out


def test_seeds_with_anchor_calibrations(tmp_path, spec):
    """Anchor calibrations in --methods: each seed's inputs get anchors (the test records unchanged),
    the direct run saves its hidden states, the anchors are scored once per seed."""
    write_split(Path(spec).parent / "tr.csv", 12, "train")  # enough per class for 8 anchors
    out = tmp_path / "runs"
    lm = FakeLM()
    plain = run_seeds(spec, methods=["direct"], seeds=[1], n_sample=12, out_dir=str(tmp_path / "plain"), lm=lm)
    summary = run_seeds(spec, methods=["direct", "lda", "lda_auto"], seeds=[1, 2], n_sample=12, out_dir=str(out),
                        lm=lm, n_anchor=8)
    assert list(summary["methods"]) == ["direct", "direct+lda", "direct+lda_auto"]
    names = {p.name for p in (out / "seed1").iterdir()}
    assert {"inputs_direct.anchors.json", "outputs_direct.hidden.npy", "outputs_direct.anchors.hidden.npy",
            "outputs_lda_auto.metrics.json"} <= names
    anchors = json.loads((out / "seed1" / "inputs_direct.anchors.json").read_text())
    assert len(anchors) == 32 and all(a["meta"]["anchor"] for a in anchors)
    assert (out / "seed1" / "inputs_direct.json").read_text() == (tmp_path / "plain" / "seed1" / "inputs_direct.json").read_text()
    metrics = json.loads((out / "seed2" / "outputs_lda_auto.metrics.json").read_text())
    assert metrics["n_anchor"] == 8 and set(metrics["features"]) >= {"layers", "scaling", "shrinkage", "cv_accuracy"}
    assert plain["methods"]["direct"]["per_seed"][0]["accuracy"] == summary["methods"]["direct"]["per_seed"][0]["accuracy"]


def test_mean_std_by_hand():
    assert mean_std([0.5, 0.7, 0.9]) == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2)}
    assert mean_std([0.4]) == {"mean": 0.4, "std": 0.0}
    assert mean_std([None]) == {"mean": None, "std": None}


def test_seed_errors(spec, tmp_path):
    with pytest.raises(ClassificationError, match="calibration dcpmi needs the direct run's files: add direct"):
        check_methods(["dcpmi", "channel"])
    with pytest.raises(ClassificationError, match="unknown 'pmi'"):
        check_methods("direct,pmi")
    with pytest.raises(ClassificationError, match="unknown preset 'imdb'"):
        run_seeds("imdb", lm=FakeLM())
    with pytest.raises(ClassificationError, match="--seeds has duplicates"):
        run_seeds(spec, seeds=[1, 1], lm=FakeLM(), out_dir=str(tmp_path / "x"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": "a.csv", "template": "x"}))
    with pytest.raises(ClassificationError, match=r"unknown key\(s\) \['template'\]"):
        run_seeds(str(bad), lm=FakeLM())


def test_report_from_seed_runs(tmp_path, spec):
    out = tmp_path / "runs"
    run_seeds(spec, seeds=[1, 2], n_sample=8, out_dir=str(out), lm=FakeLM())
    # An extra k=0 run of one method: another group in the table.
    run_seeds(spec, methods=["direct", "batch"], k=0, seeds=[4], n_sample=8, out_dir=str(tmp_path / "k0"), lm=FakeLM())
    report = Path(build_report([str(out), str(tmp_path / "k0" / "seed4" / "outputs_direct.json"),
                                str(tmp_path / "k0" / "seed4" / "*batch.metrics.json")], str(tmp_path / "report")))
    text = report.read_text()
    assert "| dataset | k | method | seeds | n | accuracy | macro-F1 | ECE | none |" in text
    assert "| topics | 0 | direct | 4 | 8 |" in text and "| topics | 1 | generate | 1, 2 | 8 |" in text
    pngs = sorted((report.parent / "img").glob("*.png"))
    # A confusion matrix per run (2 seeds x 7 methods, 2 at k=0); accuracy and reliability per (dataset, k).
    assert len(pngs) == 2 * 7 + 2 + 2 * 2
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    linked = re.findall(r"!\[[^\]]*\]\(img/([^)]+)\)", text)
    assert sorted(set(linked)) == [p.name for p in pngs] and len(linked) == len(pngs)
    assert "direct+dcpmi" in text and "±" in text


def test_report_bad_inputs(tmp_path):
    with pytest.raises(ClassificationError, match="no such file or folder"):
        load_runs([str(tmp_path / "nothing.json")])
    with pytest.raises(ClassificationError, match="folder has no \\*.metrics.json"):
        load_runs([str(tmp_path)])
    with pytest.raises(ClassificationError, match="no file matches"):
        load_runs([str(tmp_path / "*.metrics.json")])
    (tmp_path / "x.metrics.json").write_text("{}")
    with pytest.raises(ClassificationError, match="is not a metrics file"):
        load_runs([str(tmp_path / "x.metrics.json")])


@pytest.mark.parametrize("name", ["run_preprocess.py", "run_seeds.py", "run_report.py"])
def test_new_scripts_are_thin_and_document_every_flag(name):
    source = (ROOT / name).read_text()
    # run_preprocess.py has 22 flags, one documented line each (16 fit in 40 lines).
    assert len(source.splitlines()) <= (48 if name == "run_preprocess.py" else 40)
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    doc = ast.get_docstring(main)
    assert main.returns is not None and all(a.annotation is not None for a in main.args.args)
    for arg in main.args.args:
        assert f"\n{arg.arg}: " in "\n" + "\n".join(line.strip() for line in doc.splitlines()), arg.arg
    assert "fire.Fire(main)" in source and "@cli" in source


@pytest.mark.parametrize("name", ["run_seeds.py", "run_report.py", "run_evaluate_direct_calibrate_llama.py"])
def test_scripts_bad_input_exits_2(tmp_path, name):
    args = {"run_seeds.py": ["--dataset", "imdb"], "run_report.py": ["--inputs", str(tmp_path / "none")],
            "run_evaluate_direct_calibrate_llama.py": ["--calibration", "pmi"]}[name]
    p = subprocess.run([sys.executable, name, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr


def one_direct_run(tmp_path):
    """The metrics file of one direct run (fake model), as the report reads it."""
    from classification.run.runner import evaluate
    from classification_fakes import synthetic_splits
    from classification.inputs.ag_news import build_records

    train, test = synthetic_splits()
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps(build_records("direct", train, test, k=1, seed=1, sample=False)))
    evaluate("direct", str(inputs), str(tmp_path / "run" / "out.json"), lm=FakeLM())
    return tmp_path / "run" / "out.metrics.json"


def test_report_keeps_runs_of_two_models_apart(tmp_path):
    """Two metrics files that differ only in the model are two rows, not one mean ± std over 'seeds'."""
    first = one_direct_run(tmp_path)
    m = json.loads(first.read_text())
    other = dict(m, model="checkpoints/other", accuracy=0.25,
                 fingerprint=dict(m["fingerprint"], model_files={"consolidated.00.pth": {"sha256": "0" * 64}}))
    second = tmp_path / "run2" / "out.metrics.json"
    second.parent.mkdir()
    second.write_text(json.dumps(other))
    text = Path(build_report([str(first), str(second)], str(tmp_path / "report"))).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ag_news | 1 | direct |")]
    assert len(rows) == 2 and "| dataset | k | method | setting | seeds |" in text
    assert any("model checkpoints/other #" in r and "| 0.2500 ± 0.0000 |" in r for r in rows)
    assert any(f"model {m['model']} #" in r and f"| {m['accuracy']:.4f} ± 0.0000 |" in r for r in rows)
    pngs = sorted(p.name for p in (tmp_path / "report" / "img").glob("confusion_*.png"))
    assert len(pngs) == 2  # one per run, neither overwrites the other
    # Seeds of one setting are still averaged: the same run under another seed joins its row.
    third = tmp_path / "run3" / "out.metrics.json"
    third.parent.mkdir()
    third.write_text(json.dumps(dict(other, seed=2, accuracy=0.75,
                                     fingerprint=dict(other["fingerprint"], data_sha256="1" * 64))))
    text = Path(build_report([str(first), str(second), str(third)], str(tmp_path / "report"))).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ag_news | 1 | direct |")]
    assert len(rows) == 2 and any("| 1, 2 |" in r and "0.5000 ± 0.3536" in r for r in rows)


@pytest.mark.parametrize("field, value", [
    ("accuracy", "0.9"), ("macro_f1", [1]), ("seed", [1]), ("k", {"a": 1}), ("dataset", 3),
    ("confusion_matrix", {"matrix": "x", "rows": [], "columns": []}),
    ("confusion_matrix", {"matrix": [[1, 2]], "rows": ["A", "B"], "columns": ["A", "B"]}),
    ("per_class", ["A"]), ("per_class", {"A": {"precision": "high"}}),
    ("reliability", [{"lo": 0, "hi": 0.1, "n": "3"}]), ("reliability", "bins"),
])
def test_report_malformed_metrics_fields_are_one_line(tmp_path, field, value):
    path = one_direct_run(tmp_path)
    m = json.loads(path.read_text())
    m[field] = value
    path.write_text(json.dumps(m))
    with pytest.raises(ClassificationError) as e:
        build_report([str(path)], str(tmp_path / "report"))
    assert str(e.value).startswith(f"metrics file {path}: {field} is ") and "\n" not in str(e.value)


@pytest.mark.parametrize("content, cause", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"accuracy": ' + "1" * 5000 + "}", "Exceeds the limit (4300 digits)"),
])
def test_report_deep_or_huge_number_metrics_json(tmp_path, content, cause):
    path = tmp_path / "x.metrics.json"
    path.write_text(content)
    with pytest.raises(ClassificationError) as e:
        load_runs([str(path)])
    assert str(e.value).startswith(f"metrics file {path} is not valid JSON: {cause}")


def test_report_into_a_read_only_or_full_folder_is_one_line(tmp_path, monkeypatch):
    import errno
    import os

    path = one_direct_run(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # what a read-only folder does, also for root (who ignores modes)
        if locked in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(ClassificationError) as e:
        build_report([str(path)], str(locked / "report"))
    assert str(e.value) == (f"--out_dir {locked / 'report'}: cannot write: Permission denied; "
                            "choose a folder you can write to")
    monkeypatch.undo()
    locked.chmod(0o755)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ClassificationError) as e:
        build_report([str(path)], str(tmp_path / "report"))
    assert str(e.value).startswith(f"--out_dir {tmp_path / 'report'}: cannot write: No space left on device; free")


@pytest.mark.parametrize("name", ["../../../../x", "a/b", "a\\b", "x\u0000y", ".hidden", "..", "", 7])
def test_spec_names_cannot_leave_the_output_folder(tmp_path, spec, monkeypatch, name):
    """A spec's "name" becomes outputs/<name>/: separators, NUL and leading dots are refused, nothing is written."""
    work = tmp_path / "a" / "b" / "c" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    bad = tmp_path / "bad_spec.json"
    bad.write_text(json.dumps(dict(json.loads(Path(spec).read_text()), name=name)))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ClassificationError) as e:
        run_seeds(str(bad), seeds=[1], n_sample=4, lm=FakeLM())
    assert str(e.value).startswith(f"dataset name {name!r} cannot name a folder") and "\n" not in str(e.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_seeds_write_only_inside_the_output_folder(tmp_path, spec, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    run_seeds(spec, methods=["direct"], seeds=[1], n_sample=4, lm=FakeLM())
    new = [p for p in tmp_path.rglob("*") if p not in before]
    assert new and all(p == work / "outputs" or (work / "outputs" / "topics") in [p, *p.parents] for p in new)


def test_derived_dataset_names_are_plain_file_name_parts():
    from classification.inputs.datasets import dataset_name

    assert dataset_name(None, None, None, "/data/.cache") == "cache"
    assert dataset_name(None, "user/..", None, None) == "custom"
    assert dataset_name(None, "user/ag_news:default", None, None) == "ag_news"


def test_report_rows_of_two_templates_stay_one_line_each(tmp_path):
    first = one_direct_run(tmp_path)
    m = json.loads(first.read_text())
    second = tmp_path / "run2" / "out.metrics.json"
    second.parent.mkdir()
    second.write_text(json.dumps(dict(m, template="Q: {text}\nA | {label_word}")))
    text = Path(build_report([str(first), str(second)], str(tmp_path / "report"))).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ag_news | 1 | direct |")]
    assert len(rows) == 2 and any("| template Q: {text}\\nA \\| {label_word} |" in r for r in rows)


def test_seeds_with_bm25_demonstrations(tmp_path, spec, monkeypatch, capsys):
    """--demos bm25: each input (test record and anchor) gets its own retrieved demonstrations, in
    the default folder k<k>-bm25; the demonstration of the input's own class shares its topic word."""
    write_split(Path(spec).parent / "tr.csv", 12, "train")
    monkeypatch.chdir(tmp_path)
    summary = run_seeds(spec, methods=["direct", "lda"], seeds=[1], n_sample=12, lm=FakeLM(), n_anchor=4,
                        demos="bm25", demo_pool=40)
    root = tmp_path / "outputs" / "topics" / "k1-bm25" / "seed1"
    assert summary["demos"] == "bm25" and summary["demo_pool"] == 40
    train = {ex.index: ex for ex in load_spec(spec).train}
    records = json.loads((root / "inputs_direct.json").read_text())
    anchors = json.loads((root / "inputs_direct.anchors.json").read_text())
    assert len(records) == 12 and len(anchors) == 16 and len({r["prompt"] for r in records}) > 1
    anchor_indices = {a["index"] for a in anchors}  # never a demonstration
    for rec in records + anchors:
        demos = [train[i] for i in rec["demo_indices"]]
        assert rec["meta"]["demos"] == "bm25" and sorted(d.label for d in demos) == [0, 1, 2, 3]
        assert all(d.text in rec["prompt"] for d in demos) and not set(rec["demo_indices"]) & anchor_indices
        topic = next((t for t in TOPICS if f" about {t}" in rec["text"]), None)
        if topic is not None:
            own = next(d for d in demos if WORDS[d.label] == rec["ground_truth"])
            assert f" about {topic}" in own.text
    assert (root / "outputs_lda.metrics.json").is_file()
    assert "Note: with --demos bm25 every test input and every anchor has its own prompt" in capsys.readouterr().out
    with pytest.raises(ClassificationError, match="--demos 'knn' is not one of random, bm25 here"):
        run_seeds(spec, seeds=[1], lm=FakeLM(), demos="knn")
