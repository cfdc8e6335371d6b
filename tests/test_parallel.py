"""Model parallel over fairscale layers with gloo on CPU: 2 shards give the 1-shard logits."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from llama.checkpoint import write_meta
from llama.convert import convert
from llama.model import ModelArgs, Transformer

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "mp_logits.py")


def run_worker(nproc: int, ckpt, out, root) -> None:
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(ckpt), str(out)]  # plain python, no process group
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", "29533", WORKER, str(ckpt), str(out)]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_shards_match_one(tmp_path, root):
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.3 for k, v in Transformer(args).state_dict().items()}
    write_meta(args, state, tmp_path / "mp1")
    convert(str(tmp_path / "mp1"), str(tmp_path / "mp2"), to="meta", shards=2)
    run_worker(1, tmp_path / "mp1", tmp_path / "one.pt", root)
    run_worker(2, tmp_path / "mp2", tmp_path / "two.pt", root)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.shape == (2, 20, 128)
    assert (one - two).abs().max().item() <= 1e-4
