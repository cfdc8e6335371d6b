"""Model parallel over fairscale layers with gloo on CPU: 2 shards give the 1-shard logits.

Meta checkpoints are sharded on disk; HF and GGUF files are one unsharded file that each rank
reads its slice of (``--model_parallel_size``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from llama.checkpoint import write_hf, write_meta
from llama.convert import convert
from llama.model import ModelArgs, Transformer

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "mp_logits.py")


def run_worker(nproc: int, ckpt, out, root, mp_size: int = 0) -> torch.Tensor:
    extra = [str(mp_size)] if mp_size else []
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(ckpt), str(out), *extra]  # plain python, no process group
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", "29533", WORKER, str(ckpt), str(out), *extra]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out)


def random_model(args: ModelArgs):
    torch.manual_seed(0)
    return {k: torch.randn_like(v) * 0.3 for k, v in Transformer(args).state_dict().items()}


ARGS = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


def test_two_shards_match_one(tmp_path, root):
    args = ModelArgs(**ARGS)
    write_meta(args, random_model(args), tmp_path / "mp1")
    convert(str(tmp_path / "mp1"), str(tmp_path / "mp2"), to="meta", shards=2)
    one = run_worker(1, tmp_path / "mp1", tmp_path / "one.pt", root)
    two = run_worker(2, tmp_path / "mp2", tmp_path / "two.pt", root)
    assert one.shape == (2, 20, 128)
    assert (one - two).abs().max().item() <= 1e-4


def test_hf_two_ranks_match_one(tmp_path, root):
    args = ModelArgs(**ARGS)
    state = random_model(args)
    write_hf(args, state, tmp_path / "hf")
    write_meta(args, state, tmp_path / "meta")  # independent reference: the Meta loader, one process
    ref = run_worker(1, tmp_path / "meta", tmp_path / "ref.pt", root)
    one = run_worker(1, tmp_path / "hf", tmp_path / "one.pt", root)
    two = run_worker(2, tmp_path / "hf", tmp_path / "two.pt", root, mp_size=2)
    assert one.shape == (2, 20, 128)
    assert (one - ref).abs().max().item() <= 1e-5
    assert (one - two).abs().max().item() <= 1e-4


def test_gguf_k_quant_two_ranks_match_one(tmp_path, root):
    pytest.importorskip("gguf")
    from tests.test_checkpoint import q4_k_m_model

    path, expected = q4_k_m_model(tmp_path, np.random.default_rng(2))
    one = run_worker(1, path, tmp_path / "one.pt", root)
    two = run_worker(2, path, tmp_path / "two.pt", root, mp_size=2)
    assert one.shape == (2, 20, 256) and one.abs().max() > 0.1
    assert (one - two).abs().max().item() <= 1e-4


SCRIPT_RECORDS = {
    "direct": {"prompt": "Article: {text}\nCategory:", "completion": "{label_word}"},
    "channel": {"prompt": "Category: {label_word}\nArticle:", "completion": "{text}"},
}


def write_script_inputs(tmp_path: Path, method: str) -> Path:
    """A random-weight HF checkpoint of the default tokenizer's vocabulary and two ``method``
    records; returns the input file (the checkpoint is tmp_path / "hf")."""
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=49152, multiple_of=32)
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(args).state_dict().items()}
    write_hf(args, {k: torch.randn(s) * 0.3 for k, s in shapes.items()}, tmp_path / "hf")
    data = tmp_path / f"in_{method}.json"
    data.write_text(json.dumps([{**SCRIPT_RECORDS[method], "text": t, "label_words": ["World", "Sports"],
                                 "ground_truth": "World", "index": i}
                                for i, t in enumerate(["Rain in Paris.", "A goal in the final minute."])]))
    return data


def run_script(root: Path, method: str, data: Path, ckpt: Path, tokenizer: Path, nproc: int,
               scoring: str = "fast", port: int = 0) -> List[List[float]]:
    """run_evaluate_<method>_llama.py on the CPU with ``nproc`` model-parallel ranks (torchrun on
    ``port`` when more than one); returns each record's label log-probs."""
    launch = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    out = data.parent / f"out_{method}_mp{nproc}_{scoring}.json"
    res = subprocess.run([*launch, f"run_evaluate_{method}_llama.py", "--data_path", str(data), "--output_path", str(out),
                          "--ckpt_dir", str(ckpt), "--tokenizer_path", str(tokenizer), "--device", "cpu",
                          "--model_parallel_size", str(nproc), "--scoring", scoring, "--check_model", "False"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"mp={nproc}, dp=1" in res.stdout
    assert json.loads(out.with_name(out.stem + ".metrics.json").read_text())["scoring"] == scoring
    return [r["log_probs"] for r in json.loads(out.read_text())]


@pytest.mark.parametrize("method,port", [("direct", 29534), pytest.param("channel", 29535, marks=pytest.mark.slow)])
def test_script_runs_hf_checkpoint_model_parallel(tmp_path, root, default_model_dir, method, port):
    """torchrun --nproc_per_node 2 run_evaluate_<method>_llama.py --model_parallel_size 2 on an
    HF directory, unconverted, gives the single-process log-probs of both the fast path and the
    naive one (every sequence in full, no prefix cache: the reference of the fast path)."""
    data = write_script_inputs(tmp_path, method)
    tok = default_model_dir / "tokenizer.json"
    two = run_script(root, method, data, tmp_path / "hf", tok, 2, "fast", port)
    one = run_script(root, method, data, tmp_path / "hf", tok, 1, "fast")
    naive = run_script(root, method, data, tmp_path / "hf", tok, 1, "naive")
    assert np.array(two).shape == (2, 2) and np.isfinite(two).all()
    print(f"{method}: max |Δ| mp2 fast vs mp1 fast {np.abs(np.subtract(two, one)).max():.2e}, "
          f"vs mp1 naive {np.abs(np.subtract(two, naive)).max():.2e}")
    assert np.allclose(two, one, atol=1e-4, rtol=0)
    assert np.allclose(two, naive, atol=1e-4, rtol=0)
