"""Checkpoint layouts: name table, q/k permutation, converter round trips, and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llama.checkpoint import (
    NAME_TABLE, CheckpointError, convert_name, load_model, permute_qk, read_checkpoint, read_gguf,
)
from llama.convert import convert
from llama.model import ModelArgs, Transformer
from llama.runtime import setup_runtime


def meta_names(n_layers: int = 2):
    return [p.replace("{i}", str(i)) for p in NAME_TABLE for i in range(n_layers)]


def test_name_table_round_trips():
    for name in set(meta_names()):
        for fmt in ("hf", "gguf"):
            other = convert_name(name, "meta", fmt)
            assert other is not None
            assert convert_name(other, fmt, "meta") == name
    assert convert_name("model.layers.3.self_attn.rotary_emb.inv_freq", "hf", "meta") is None


def test_permute_qk_is_hf_rotate_half_layout():
    n_heads, head_dim, dim = 2, 8, 4
    w = torch.arange(n_heads * head_dim * dim, dtype=torch.float32).view(n_heads * head_dim, dim)
    hf = permute_qk(w, n_heads, to_hf=True)
    # Meta row (head h, pair i, element j) must land at HF row h*head_dim + j*head_dim/2 + i.
    for h in range(n_heads):
        for i in range(head_dim // 2):
            for j in range(2):
                assert torch.equal(hf[h * head_dim + j * head_dim // 2 + i], w[h * head_dim + 2 * i + j])
    assert torch.equal(permute_qk(hf, n_heads, to_hf=False), w)


def full_state(path: str):
    args, state = read_checkpoint(path)
    return args, {k: v.float() for k, v in state.items()}


def test_gguf_meta_hf_meta_round_trip(tmp_path, default_gguf):
    convert(str(default_gguf), str(tmp_path / "meta1"), to="meta")
    convert(str(tmp_path / "meta1"), str(tmp_path / "hf"), to="hf")
    convert(str(tmp_path / "hf"), str(tmp_path / "meta2"), to="meta", shards=3)
    convert(str(tmp_path / "meta2"), str(tmp_path / "meta3"), to="meta")
    _, src = full_state(str(default_gguf))
    args1, meta1 = full_state(str(tmp_path / "meta1"))
    args3, meta3 = full_state(str(tmp_path / "meta3"))
    assert args1 == args3
    assert sorted(src) == sorted(meta1) == sorted(meta3)
    for name in src:
        assert torch.equal(src[name], meta1[name]), name
        assert torch.equal(meta1[name], meta3[name]), name
    assert len(list((tmp_path / "meta2").glob("consolidated.*.pth"))) == 3
    # Meta's own loader convention: strict load of a converted shard into the module.
    with torch.device("meta"):
        model = Transformer(args1)
    model.load_state_dict(torch.load(tmp_path / "meta1" / "consolidated.00.pth", weights_only=True),
                          strict=True, assign=True)


def tiny_meta(tmp_path, vocab: int = 96):
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=vocab, multiple_of=16)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v, device="cpu") for k, v in Transformer(args).state_dict().items()}
    from llama.checkpoint import write_meta

    write_meta(args, state, tmp_path)
    return tmp_path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_params_json(tmp_path):
    ckpt = tiny_meta(tmp_path)
    (ckpt / "params.json").unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(str(ckpt))
    assert "params.json" in one_line(e) and str(ckpt) in str(e.value)


def test_truncated_pth(tmp_path):
    ckpt = tiny_meta(tmp_path)
    pth = ckpt / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_model(str(ckpt))
    assert "consolidated.00.pth" in one_line(e) and "truncated" in str(e.value)


def test_vocab_size_mismatch(tmp_path):
    ckpt = tiny_meta(tmp_path, vocab=96)
    with pytest.raises(CheckpointError) as e:
        load_model(str(ckpt), vocab_size=49152)
    assert "tokenizer" in one_line(e) and "96" in str(e.value)
    load_model(str(ckpt), vocab_size=96)


def test_shard_count_must_divide_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError) as e:
        setup_runtime(model_parallel_size=2, source="checkpoints/llama/13B")
    assert "multiple of 2" in one_line(e) and "checkpoints/llama/13B" in str(e.value)


def test_script_reports_bad_checkpoint_in_one_line(tmp_path, root, default_model_dir):
    """A damaged checkpoint reaches the user as `error: ...` and exit status 2, not a traceback."""
    import subprocess
    import sys

    ckpt = tiny_meta(tmp_path / "ckpt")
    pth = ckpt / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[:100])
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"prompt": "Article: {text}\nCategory:", "completion": "{label_word}",
                                 "text": "x", "label_words": ["A", "B"], "ground_truth": "A", "index": 0}]))
    res = subprocess.run([sys.executable, "run_evaluate_direct_llama.py", "--data_path", str(data),
                          "--output_path", str(tmp_path / "out.json"), "--ckpt_dir", str(ckpt),
                          "--tokenizer_path", str(default_model_dir / "tokenizer.json")],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "consolidated.00.pth" in lines[0]


def test_unsupported_gguf_tensor_type(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val in [("embedding_length", 32), ("block_count", 1), ("attention.head_count", 2),
                     ("attention.head_count_kv", 2), ("feed_forward_length", 96), ("vocab_size", 64)]:
        w.add_uint32(f"llama.{key}", val)
    # A Q6_K block is 210 bytes for 256 values: one row of 256.
    w.add_tensor("token_embd.weight", np.zeros((1, 210), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    assert "Q6_K" in one_line(e) and "bad.gguf" in str(e.value)


def test_unknown_path(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "nope"))
    assert "nope" in one_line(e)
    (tmp_path / "junk").mkdir()
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "junk"))
    assert "not a checkpoint" in one_line(e)


def test_params_json_written_is_meta_style(tmp_path):
    ckpt = tiny_meta(tmp_path)
    params = json.loads((ckpt / "params.json").read_text())
    assert {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "norm_eps"} <= set(params)
