"""Resume trusts files, not path names; progress is saved by time; output and metrics stay a pair."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classification import fileio, paths
from classification.run import resume, runner
from classification_fakes import FakeCrash, FakeLM
from test_runner import read, write_inputs

ROOT = Path(__file__).resolve().parents[1]


def fake_checkpoint(folder: Path) -> tuple:
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 8, "n_heads": 2}))
    (folder / "consolidated.00.pth").write_bytes(bytes(range(256)) * (3 << 12))  # 3 MiB
    tok = folder / "tokenizer.json"
    tok.write_text('{"model": {"vocab": {}}}')
    return str(folder), str(tok)


def crash_then_rerun(tmp_path, data, ckpt, tok, change, **rerun):
    out = str(tmp_path / "out.json")
    with pytest.raises(FakeCrash):
        runner.evaluate("direct", data, out, ckpt_dir=ckpt, tokenizer_path=tok, lm=FakeLM(fail_after_calls=2),
                        chunk_size=4)
    change()
    return runner.evaluate("direct", data, out, ckpt_dir=ckpt, tokenizer_path=tok, lm=FakeLM(), chunk_size=4, **rerun)


def test_resume_continues_with_unchanged_files(tmp_path):
    data, _ = write_inputs(tmp_path)
    ckpt, tok = fake_checkpoint(tmp_path / "model")
    assert crash_then_rerun(tmp_path, data, ckpt, tok, lambda: None)["n_resumed"] == 8


def test_changed_params_behind_the_same_path_start_over(tmp_path, capsys):
    data, _ = write_inputs(tmp_path)
    ckpt, tok = fake_checkpoint(tmp_path / "model")
    params = Path(ckpt) / "params.json"
    m = crash_then_rerun(tmp_path, data, ckpt, tok, lambda: params.write_text(json.dumps({"dim": 8, "n_heads": 4})))
    assert m["n_resumed"] == 0
    assert "Starting over" in capsys.readouterr().out and "model_files" in m["fingerprint"]


def test_weights_rewritten_in_place_with_same_size_and_mtime_start_over(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "WHOLE_HASH_BYTES", 1 << 20)  # hash the 3 MiB file by its ends
    data, _ = write_inputs(tmp_path)
    ckpt, tok = fake_checkpoint(tmp_path / "model")
    weights = Path(ckpt) / "consolidated.00.pth"

    def rewrite() -> None:
        st = weights.stat()
        with open(weights, "r+b") as f:
            f.seek(-10, os.SEEK_END)
            f.write(b"\0" * 10)
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))

    assert crash_then_rerun(tmp_path, data, ckpt, tok, rewrite)["n_resumed"] == 0


def test_changed_tokenizer_file_starts_over(tmp_path):
    data, _ = write_inputs(tmp_path)
    ckpt, tok = fake_checkpoint(tmp_path / "model")
    assert crash_then_rerun(tmp_path, data, ckpt, tok, lambda: Path(tok).write_text("{}"))["n_resumed"] == 0


class PrecisionRuntime(resume.LocalRuntime):
    def __init__(self, dtype: str) -> None:
        import torch

        self.dtype, self.device = getattr(torch, dtype), torch.device("cpu")


def test_dtype_as_used_is_recorded_and_fingerprinted(tmp_path):
    data, _ = write_inputs(tmp_path)
    out = str(tmp_path / "out.json")
    with pytest.raises(FakeCrash):
        runner.evaluate("direct", data, out, lm=FakeLM(fail_after_calls=2), runtime=PrecisionRuntime("float16"),
                        chunk_size=4)
    m = runner.evaluate("direct", data, out, lm=FakeLM(), runtime=PrecisionRuntime("bfloat16"), chunk_size=4)
    assert m["n_resumed"] == 0 and m["dtype"] == "bfloat16" and m["device"] == "cpu"
    assert m["fingerprint"]["dtype"] == "bfloat16" and m["fingerprint"]["quantize"] == "none"


def test_quantize_is_fingerprinted(tmp_path):
    data, _ = write_inputs(tmp_path)
    out = str(tmp_path / "out.json")
    with pytest.raises(FakeCrash):
        runner.evaluate("direct", data, out, lm=FakeLM(fail_after_calls=2), chunk_size=4)
    assert runner.evaluate("direct", data, out, lm=FakeLM(), chunk_size=4, quantize="int8")["n_resumed"] == 0


def test_batch_size_is_fingerprinted_under_int8_only(tmp_path):
    """int8 results depend on which rows share a forward pass (int8 rounding amplifies the
    float-level differences of another batching); fp ones do not.  The CPU kernel path is recorded."""
    data, _ = write_inputs(tmp_path)
    for quantize, device, resumed in (("none", None, True), ("int8", "cpu", False), ("int8", "cuda", False)):
        out = str(tmp_path / f"out_{quantize}_{device}.json")
        with pytest.raises(FakeCrash):
            runner.evaluate("direct", data, out, lm=FakeLM(fail_after_calls=2), chunk_size=4, quantize=quantize,
                            max_batch_size=4, device=device)
        m = runner.evaluate("direct", data, out, lm=FakeLM(), chunk_size=4, quantize=quantize, max_batch_size=8,
                            device=device)
        assert (m["n_resumed"] > 0) == resumed, (quantize, device)
        assert ("int8_kernel" in m["fingerprint"]) == ((quantize, device) == ("int8", "cpu"))


def test_file_digest_hashes_small_files_whole(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 99 + b"y")
    assert fileio.file_digest(str(a)) != fileio.file_digest(str(b))
    assert fileio.file_digest(str(a)) == {"sha256": __import__("hashlib").sha256(b"x" * 100).hexdigest()}


def test_metrics_of_another_output_are_not_reused(tmp_path, capsys):
    data, recs = write_inputs(tmp_path)
    out = tmp_path / "out.json"
    runner.evaluate("direct", data, str(out), lm=FakeLM())
    # A kill after the output was rewritten but before its metrics: the pair no longer matches.
    outputs = read(str(out))
    outputs[0]["prediction"] = "World" if outputs[0]["prediction"] != "World" else "Sports"
    out.write_text(json.dumps(outputs))
    capsys.readouterr()
    lm = FakeLM()
    m = runner.evaluate("direct", data, str(out), lm=lm, reuse=True)
    assert "Up to date" not in capsys.readouterr().out and sum(lm.requests.values()) == 4 * len(recs)
    assert m["accuracy"] == 1.0 and read(str(out))[0]["correct"]


SLOW_RUN = """
import time
from classification.run import runner
from classification_fakes import FakeLM

class SlowLM(FakeLM):
    def loglikelihood(self, requests):
        time.sleep(0.05 * len(requests))
        return super().loglikelihood(requests)

runner.evaluate("direct", {data!r}, {out!r}, lm=SlowLM())
"""


def test_a_killed_small_run_keeps_what_it_finished(tmp_path):
    data, recs = write_inputs(tmp_path)  # 24 records, fewer than one chunk of 64; ~5 s at this speed
    out = str(tmp_path / "out.json")
    script = SLOW_RUN.format(data=data, out=out)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))  # the test doubles; the packages are installed
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    partial = Path(out + ".partial.jsonl")
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and len(partial.read_text().splitlines()) > 1:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not Path(out).exists(), "the run finished before it could be killed"
    saved = len(partial.read_text().splitlines()) - 1
    assert 0 < saved < len(recs)
    lm = FakeLM()
    m = runner.evaluate("direct", data, out, lm=lm)
    assert m["n_resumed"] == saved and sum(lm.requests.values()) == 4 * (len(recs) - saved)
    assert m["accuracy"] == 1.0


def test_shard_is_strided_and_complete():
    positions = list(range(10))
    shards = [resume.shard(positions, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert paths.partial_path("o.json") == "o.json.partial.jsonl"
    assert paths.partial_path("o.json", 1, 2) == "o.json.partial.1.jsonl"
