"""The run_* scripts: thin, documented, fire-driven, one-line errors; scored with a fake model."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import fire
import pytest

from classification.run import runner
from classification.inputs.ag_news import build_records
from classification_fakes import FakeLM, synthetic_splits

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data/ag_news"
EVALUATE = ["direct", "direct_calibrate", "channel", "generate"]
SCRIPTS = [f"run_evaluate_{m}_llama.py" for m in EVALUATE] + [f"run_preprocess_{m}_ag_news.py" for m in ("direct", "channel")]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_are_thin_and_document_every_flag(name):
    source = (ROOT / name).read_text()
    assert len(source.splitlines()) <= 40
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    doc = ast.get_docstring(main)
    assert main.returns is not None and all(a.annotation is not None for a in main.args.args)
    for arg in main.args.args:
        assert arg.arg in doc, f"{name}: flag {arg.arg} not explained"
    assert "fire.Fire(main)" in source


@pytest.fixture
def fake_model(monkeypatch):
    made = []

    def load_lm(ckpt_dir, tokenizer_path, *, max_seq_len, max_batch_size, dtype, device, scoring, completion_end,
                quantize, model_parallel_size, verify_checkpoint):
        append_eos = completion_end == "eos"
        made.append(dict(ckpt_dir=ckpt_dir, max_seq_len=max_seq_len, append_eos=append_eos, scoring=scoring,
                         model_parallel_size=model_parallel_size, quantize=quantize))
        return FakeLM(max_seq_len=max_seq_len, append_eos=append_eos)

    monkeypatch.setattr(runner, "load_lm", load_lm)
    return made


def test_evaluate_scripts_with_fake_model(tmp_path, fake_model):
    train, test = synthetic_splits()
    for method in ("direct", "channel"):
        recs = build_records(method, train, test, k=1, seed=1, sample=True, n_sample=8)
        (tmp_path / f"in_{method}.json").write_text(json.dumps(recs))
    d = str(tmp_path)
    fire.Fire(load_script("run_evaluate_direct_llama.py").main,
              command=["--data_path", f"{d}/in_direct.json", "--output_path", f"{d}/out_direct.json", "--max_seq_len", "512",
                       "--quantize", "int8"])
    fire.Fire(load_script("run_evaluate_direct_calibrate_llama.py").main,
              command=["--direct_input_path", f"{d}/in_direct.json", "--direct_output_path", f"{d}/out_direct.json",
                       "--output_path", f"{d}/out_cal.json", "--content_free", '["N/A", "", "[MASK]"]',
                       "--max_seq_len", "512", "--quantize", "int8"])
    fire.Fire(load_script("run_evaluate_channel_llama.py").main,
              command=["--data_path", f"{d}/in_channel.json", "--output_path", f"{d}/out_channel.json",
                       "--completion_end", "newline", "--scoring", "naive"])
    fire.Fire(load_script("run_evaluate_generate_llama.py").main,
              command=["--data_path", f"{d}/in_direct.json", "--output_path", f"{d}/out_gen.json", "--max_gen_len", "4",
                       "--model_parallel_size", "2"])
    assert [m["append_eos"] for m in fake_model] == [True, True, False, True]
    assert fake_model[0]["max_seq_len"] == 512 and fake_model[2]["scoring"] == "naive"
    assert [m["model_parallel_size"] for m in fake_model] == [None, None, None, 2]
    assert fake_model[0]["ckpt_dir"] == "checkpoints/smollm2/135M"
    assert [m["quantize"] for m in fake_model] == ["int8", "int8", "none", "none"]
    assert json.loads((tmp_path / "out_direct.metrics.json").read_text())["quantize"] == "int8"
    cal = json.loads((tmp_path / "out_cal.metrics.json").read_text())
    assert cal["content_free"] == ["N/A", "", "[MASK]"]
    for name in ("direct", "cal", "channel", "gen"):
        assert len(json.loads((tmp_path / f"out_{name}.json").read_text())) == 8


def test_bad_input_exits_2_in_process(tmp_path, capsys):
    main = load_script("run_evaluate_channel_llama.py").main
    with pytest.raises(SystemExit) as e:
        fire.Fire(main, command=["--data_path", str(tmp_path / "missing.json")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --data_path")


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    p = run("run_evaluate_direct_llama.py", "--data_path", str(bad), "--output_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: --data_path")
    p = run("run_preprocess_channel_ag_news.py", "--data_dir", str(tmp_path), "--data_path", str(tmp_path / "x.json"))
    assert p.returncode == 2 and p.stderr.startswith("error: --data_dir") and "Traceback" not in p.stderr


@pytest.mark.skipif(not (SHARED / "test.csv").is_file(), reason="shared ag_news data not present")
def test_preprocess_script_on_shared_data(tmp_path):
    out = tmp_path / "inputs.json"
    p = run("run_preprocess_direct_ag_news.py", "--data_dir", str(SHARED), "--data_path", str(out), "--k", "2", "--n_sample", "12")
    assert p.returncode == 0, p.stderr
    recs = json.loads(out.read_text())
    assert len(recs) == 12 and recs[0]["prompt"].count("Category:") == 9
