"""Seeds: one command over several demonstration seeds, per-seed files, mean ± std; then the report."""

import ast
import csv
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
from classification.run.seeds import SEED_METHODS, check_methods, run_seeds
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
        assert recs[0]["meta"] == {"dataset": "topics", "method": "direct", "k": 1, "seed": seed, "sample_seed": 0}
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
    assert summary["methods"]["generate"]["ece"] == {"mean": None, "std": None}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    table = (out / "summary.md").read_text()
    assert "| method | seed 1 | seed 2 | seed 3 | accuracy | macro-F1 | ECE |" in table and "±" in table
    # Run again: everything is reused, nothing is scored.
    lm2 = FakeLM()
    again = run_seeds(spec, seeds=[1, 2, 3], n_sample=12, out_dir=str(out), lm=lm2)
    assert lm2.calls == 0 and again["methods"] == summary["methods"]
    assert "Up to date" in capsys.readouterr().out


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
