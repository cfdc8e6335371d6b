"""Model parallel over fairscale layers with gloo on CPU: 2 shards give the 1-shard logits.

Meta checkpoints are sharded on disk; HF and GGUF files are one unsharded file that each rank
reads its slice of (``--model_parallel_size``).
"""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_script_runs_hf_checkpoint_model_parallel(tmp_path, root, default_model_dir):
    """torchrun --nproc_per_node 2 run_evaluate_direct_llama.py --model_parallel_size 2 on an HF
    directory, unconverted, gives the single-process log-probs."""
    import json

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=49152, multiple_of=32)
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(args).state_dict().items()}
    write_hf(args, {k: torch.randn(s) * 0.3 for k, s in shapes.items()}, tmp_path / "hf")
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"prompt": "Article: {text}\nCategory:", "completion": "{label_word}", "text": t,
                                 "label_words": ["World", "Sports"], "ground_truth": "World", "index": i}
                                for i, t in enumerate(["Rain in Paris.", "A goal in the final minute."])]))
    outs = {}
    for nproc in (1, 2):
        launch = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534"]
        out = tmp_path / f"out{nproc}.json"
        res = subprocess.run([*launch, "run_evaluate_direct_llama.py", "--data_path", str(data), "--output_path", str(out),
                              "--ckpt_dir", str(tmp_path / "hf"), "--tokenizer_path", str(default_model_dir / "tokenizer.json"),
                              "--device", "cpu", "--model_parallel_size", str(nproc), "--check_model", "False"],
                             cwd=root, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"mp={nproc}, dp=1" in res.stdout
        outs[nproc] = [r["log_probs"] for r in json.loads(out.read_text())]
    assert np.allclose(outs[1], outs[2], atol=1e-4, rtol=0)
