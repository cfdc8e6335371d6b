"""The README's scripts end to end with the real default model, in subprocesses as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama.tokenizer import load_tokenizer
from tolerance import sum_tolerance

EVALUATE = {
    "direct": "run_evaluate_direct_llama.py",
    "channel": "run_evaluate_channel_llama.py",
    "generate": "run_evaluate_generate_llama.py",
}


def run(root: Path, *args: str, torchrun: int = 0, timeout: int = 600) -> str:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                               "--master_port", "29541"] if torchrun else []) + list(args)
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def model_flags(model_dir: Path) -> list:
    return ["--ckpt_dir", str(model_dir / "135M"), "--tokenizer_path", str(model_dir / "tokenizer.json")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, root, shared_data, default_model_dir):
    d = tmp_path_factory.mktemp("e2e")
    for method in ("direct", "channel"):
        run(root, f"run_preprocess_{method}_ag_news.py", "--data_dir", str(shared_data / "ag_news"),
            "--n_sample", "8", "--data_path", str(d / f"in_{method}.json"))
    return d


def evaluate(root, model_dir, inputs, method, out, *extra, torchrun=0):
    data = inputs / f"in_{'channel' if method == 'channel' else 'direct'}.json"
    stdout = run(root, EVALUATE[method], "--data_path", str(data), "--output_path", str(out),
                 *model_flags(model_dir), *extra, torchrun=torchrun)
    return stdout, json.loads(out.read_text())


# channel's naive run scores every text in full at batch size 1 (minutes): with the slow tests, as
# generate's; test_scoring checks fast = naive for channel requests and cached generation in-process.
@pytest.mark.parametrize("method", ["direct", *(pytest.param(m, marks=pytest.mark.slow) for m in ("channel", "generate"))])
def test_fast_equals_naive_and_batch_size(root, default_model_dir, inputs, tmp_path, method):
    stdout, fast = evaluate(root, default_model_dir, inputs, method, tmp_path / "fast.json")
    assert "Accuracy: " in stdout
    assert (tmp_path / "fast.metrics.json").exists()
    _, naive = evaluate(root, default_model_dir, inputs, method, tmp_path / "naive.json",
                        "--scoring", "naive", "--max_batch_size", "1")
    assert [r["prediction"] for r in fast] == [r["prediction"] for r in naive]
    assert [r["index"] for r in fast] == [r["index"] for r in naive]
    if method == "direct":
        delta = max(abs(a - b) for f, n in zip(fast, naive) for a, b in zip(f["log_probs"], n["log_probs"]))
        assert delta <= 1e-4
    if method == "channel":  # a sum over every token of the text: the bound grows with it
        tok = load_tokenizer(str(default_model_dir / "tokenizer.json"))
        texts = {r["index"]: r["text"] for r in json.loads((inputs / "in_channel.json").read_text())}
        for f, n in zip(fast, naive):
            n_scored = len(tok.encode(" " + texts[f["index"]], bos=False, eos=False)) + 1  # + EOS
            assert max(abs(a - b) for a, b in zip(f["log_probs"], n["log_probs"])) <= sum_tolerance(n_scored)


def test_calibrate_after_direct(root, default_model_dir, inputs, tmp_path):
    _, direct = evaluate(root, default_model_dir, inputs, "direct", tmp_path / "direct.json")
    out = tmp_path / "calibrated.json"
    stdout = run(root, "run_evaluate_direct_calibrate_llama.py", "--direct_input_path", str(inputs / "in_direct.json"),
                 "--direct_output_path", str(tmp_path / "direct.json"), "--output_path", str(out),
                 *model_flags(default_model_dir))
    assert "Accuracy: " in stdout
    calibrated = json.loads(out.read_text())
    assert len(calibrated) == len(direct)
    for rec in calibrated:  # calibrated scores are normalised log-probabilities
        assert abs(sum(pow(2.718281828459045, x) for x in rec["log_probs"]) - 1) < 1e-6


@pytest.mark.parametrize("method", ["direct", pytest.param("channel", marks=pytest.mark.slow)])
def test_data_parallel_torchrun_matches_single_process(root, default_model_dir, inputs, tmp_path, method):
    _, one = evaluate(root, default_model_dir, inputs, method, tmp_path / "one.json")
    _, two = evaluate(root, default_model_dir, inputs, method, tmp_path / "two.json", torchrun=2)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in two]
    delta = max(abs(a - b) for x, y in zip(one, two) for a, b in zip(x["log_probs"], y["log_probs"]))
    assert delta <= 1e-4


SLOW_CLOCK = """
import runpy, sys, time
clock = time.monotonic
time.monotonic = lambda: clock() * 1000  # every chunk looks 1,000 times slower: chunks stay small
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_resume_after_kill(root, default_model_dir, shared_data, tmp_path):
    """Kill a run once its first chunk is saved; the rerun finishes with the uninterrupted result.
    The killed run's clock is slowed (SLOW_CLOCK), so its chunks are the smallest and a few dozen
    examples leave time to kill it."""
    data = tmp_path / "in.json"
    run(root, "run_preprocess_direct_ag_news.py", "--data_dir", str(shared_data / "ag_news"),
        "--n_sample", "36", "--data_path", str(data))
    args = [sys.executable, "run_evaluate_direct_llama.py", "--data_path", str(data), *model_flags(default_model_dir)]
    out = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLOCK, *args[1:], "--output_path", str(out)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    partial = Path(str(out) + ".partial.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) > 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = len(partial.read_text().splitlines())
    assert not out.exists() and saved > 1
    stdout = run(root, *args[1:], "--output_path", str(out))
    assert "Resuming" in stdout
    run(root, *args[1:], "--output_path", str(tmp_path / "whole.json"))
    resumed, whole = json.loads(out.read_text()), json.loads((tmp_path / "whole.json").read_text())
    assert [r["prediction"] for r in resumed] == [r["prediction"] for r in whole]
    assert [r["index"] for r in resumed] == [r["index"] for r in whole]
    assert not partial.exists()




def test_int8_results_do_not_depend_on_the_machine_speed(root, default_model_dir, shared_data, tmp_path):
    """Chunks follow the measured speed; under --quantize int8 a deliberately slow run (its clock
    sped up, so every chunk is the smallest) gives the same log-probs as a normal one."""
    data = tmp_path / "in.json"
    run(root, "run_preprocess_direct_ag_news.py", "--data_dir", str(shared_data / "ag_news"),
        "--n_sample", "16", "--data_path", str(data))
    args = ["run_evaluate_direct_llama.py", "--data_path", str(data), *model_flags(default_model_dir),
            "--quantize", "int8", "--max_batch_size", "4"]
    run(root, *args, "--output_path", str(tmp_path / "fast.json"))
    run(root, "-c", SLOW_CLOCK, *args, "--output_path", str(tmp_path / "slow.json"))
    fast, slow = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("fast", "slow"))
    chunks = [json.loads((tmp_path / f"{n}.metrics.json").read_text()) for n in ("fast", "slow")]
    assert all(m["n_resumed"] == 0 for m in chunks)
    assert max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f["log_probs"], s["log_probs"])) <= 1e-5
