"""Checkpoint layouts: name table, q/k permutation, converter round trips, and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import llama.checkpoint
from llama.checkpoint import (
    NAME_TABLE, CheckpointError, convert_name, load_model, permute_qk, read_checkpoint, read_gguf, read_hf,
    quantize_state, split_state, write_gguf, write_hf,
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


def run_direct_script(tmp_path, root, ckpt, tokenizer):
    """(exit status, stderr lines) of run_evaluate_direct_llama.py on one record with ``ckpt``."""
    import subprocess
    import sys

    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"prompt": "Article: {text}\nCategory:", "completion": "{label_word}",
                                 "text": "x", "label_words": ["A", "B"], "ground_truth": "A", "index": 0}]))
    res = subprocess.run([sys.executable, "run_evaluate_direct_llama.py", "--data_path", str(data),
                          "--output_path", str(tmp_path / "out.json"), "--ckpt_dir", str(ckpt),
                          "--tokenizer_path", str(tokenizer)],
                         cwd=root, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stderr.strip().splitlines()


def test_script_reports_bad_checkpoint_in_one_line(tmp_path, root, default_model_dir):
    """A damaged checkpoint reaches the user as `error: ...` and exit status 2, not a traceback."""
    ckpt = tiny_meta(tmp_path / "ckpt")
    pth = ckpt / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[:100])
    code, lines = run_direct_script(tmp_path, root, ckpt, default_model_dir / "tokenizer.json")
    assert code == 2, lines[-20:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "consolidated.00.pth" in lines[0]


def test_unsupported_gguf_tensor_type(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val in [("embedding_length", 32), ("block_count", 1), ("attention.head_count", 2),
                     ("attention.head_count_kv", 2), ("feed_forward_length", 96), ("vocab_size", 64)]:
        w.add_uint32(f"llama.{key}", val)
    # Q8_K is llama.cpp's intermediate type for dot products, never dequantized: 292 bytes per 256 values.
    w.add_tensor("token_embd.weight", np.zeros((1, 292), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    assert "Q8_K" in one_line(e) and "bad.gguf" in str(e.value) and "token_embd.weight" in str(e.value)


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


# ---------------------------------------------------------------------------------------------
# Streamed, sharded reads of HF and GGUF


@pytest.fixture
def small_chunks(monkeypatch):
    """Read a few rows at a time, so the tiny test tensors take several (uneven) chunks."""
    monkeypatch.setattr(llama.checkpoint, "CHUNK_BYTES", 1000)


def random_state(args: ModelArgs, seed: int = 0, scale: float = 0.3):
    torch.manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(args).state_dict().items()}
    return {k: torch.randn(shape) * scale for k, shape in shapes.items()}


def test_qk_permute_commutes_with_head_aligned_slice():
    n_heads, head_dim, dim, mp = 4, 8, 6, 2
    w = torch.randn(n_heads * head_dim, dim)
    rows = n_heads * head_dim // mp
    for rank in range(mp):
        part = slice(rank * rows, (rank + 1) * rows)
        assert torch.equal(permute_qk(w, n_heads, to_hf=False)[part], permute_qk(w[part], n_heads // mp, to_hf=False))


def write_hf_two_files(args: ModelArgs, state, out):
    """write_hf, then split its one file into model-0000N-of-00002.safetensors + index, as HF does."""
    from safetensors.torch import load_file, save_file

    write_hf(args, state, out)
    tensors = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in chunk}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_hf_sliced_read_equals_full_read_and_split(tmp_path, small_chunks, tied):
    args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=128, multiple_of=32,
                     tie_word_embeddings=tied)
    state = random_state(args)
    if tied:
        state["output.weight"] = state["tok_embeddings.weight"]
    hf = write_hf_two_files(args, state, tmp_path / "hf")
    _, full = read_hf(hf)
    for name in state:
        assert torch.equal(full[name], state[name]), name
    for mp in (2, 4):
        for rank in range(mp):
            _, part = read_hf(hf, rank, mp, torch.bfloat16)
            expected = split_state(state, rank, mp)
            assert sorted(part) == sorted(expected)
            for name, t in part.items():
                assert t.dtype == torch.bfloat16 and t.is_contiguous(), name
                assert torch.equal(t, expected[name].to(torch.bfloat16)), (name, rank, mp)


def test_model_parallel_size_must_split_whole_heads(tmp_path):
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)
    hf = tmp_path / "hf"
    write_hf(args, random_state(args), hf)
    with pytest.raises(CheckpointError) as e:
        read_hf(hf, 0, 4)
    assert "2 key/value heads" in one_line(e) and "model-parallel size 4" in str(e.value)


def k_quant_reference(rng):
    """Blocks of Q2_K, Q4_K, Q5_K and Q6_K packed from chosen integers, with their values by formula.

    d and dmin are powers of two, so every value is exact in float32 and can be compared exactly.
    """
    import gguf

    from helpers.gguf_files import pack_q2_k, pack_q4_k, pack_q5_k, pack_q6_k

    T = gguf.GGMLQuantizationType
    out = {}
    for qtype, qmax, scmax, sub in ((T.Q2_K, 3, 15, 16), (T.Q4_K, 15, 63, 32), (T.Q5_K, 31, 63, 32)):
        blocks, values = [], []
        for _ in range(4):  # 4 blocks: a (2, 512) tensor
            d, dmin = 2.0 ** -int(rng.integers(4, 9)), 2.0 ** -int(rng.integers(4, 9))
            sc = rng.integers(0, scmax + 1, 256 // sub)
            m = rng.integers(0, scmax + 1, 256 // sub)
            q = rng.integers(0, qmax + 1, 256)
            sc[0], m[0], q[:2] = scmax, scmax, (0, qmax)  # the extremes of every field appear
            pack = {T.Q2_K: pack_q2_k, T.Q4_K: pack_q4_k, T.Q5_K: pack_q5_k}[qtype]
            blocks.append(pack(d, dmin, sc, m, q))
            v = np.arange(256) // sub
            values.append(d * sc[v] * q - dmin * m[v])
        out[qtype] = (np.stack(blocks).reshape(2, -1), np.stack(values).reshape(2, 512).astype(np.float32))
    blocks, values = [], []
    for _ in range(4):
        d = 2.0 ** -int(rng.integers(4, 9))
        sc = rng.integers(-128, 128, 16)
        q = rng.integers(0, 64, 256)
        sc[:2], q[:2] = (-128, 127), (0, 63)
        blocks.append(pack_q6_k(d, sc, q))
        values.append(d * sc[np.arange(256) // 16] * (q - 32))
    out[T.Q6_K] = (np.stack(blocks).reshape(2, -1), np.stack(values).reshape(2, 512).astype(np.float32))
    return out


def test_gguf_k_quants_match_block_layout_reference(tmp_path, small_chunks):
    gguf = pytest.importorskip("gguf")
    cases = k_quant_reference(np.random.default_rng(0))
    # Each K-quant as one (2, 512) tensor of a model with dim 512; the loader reads them by name.
    args = ModelArgs(dim=512, n_layers=1, n_heads=4, vocab_size=2, multiple_of=256)
    names = ["tok_embeddings.weight", "output.weight", "layers.0.attention.wq.weight", "layers.0.attention.wk.weight"]
    tensors = {name: case for name, case in zip(names, cases.items())}
    path = write_gguf(args, {n: (raw, qtype) for n, (qtype, (raw, _)) in tensors.items()}, tmp_path / "k.gguf")
    _, state = read_gguf(path)
    for name, (qtype, (raw, expected)) in tensors.items():
        assert np.array_equal(gguf.quants.dequantize(raw, qtype), expected), qtype.name
        assert torch.equal(state[name], torch.from_numpy(expected)), qtype.name
        for rank in range(2):  # row split (dim 0), and column split of a whole number of blocks
            _, part = read_gguf(path, rank, 2, torch.float32)
            assert torch.equal(part[name], split_state({name: torch.from_numpy(expected)}, rank, 2)[name])


def q4_k_m_model(tmp_path, rng):
    """A tiny random llama in a Q4_K_M-like mix: Q4_K, Q6_K for v/down/output, F32 norms."""
    import gguf

    from helpers.gguf_files import random_k_blocks

    T = gguf.GGMLQuantizationType
    args = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=256)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            tensors[name] = ((1 + 0.1 * rng.standard_normal(shape)).astype(np.float32), T.F32)
        else:
            q6 = name == "output.weight" or name.endswith(("wv.weight", "w2.weight"))
            qtype = T.Q6_K if q6 else T.Q4_K
            tensors[name] = (random_k_blocks(rng, qtype, *shape, scale=4e-5 if q6 else 2e-4), qtype)
    path = write_gguf(args, tensors, tmp_path / "q4km.gguf")
    expected = {n: torch.from_numpy(gguf.quants.dequantize(raw, qtype).copy()).reshape(shapes[n])
                for n, (raw, qtype) in tensors.items()}
    return path, expected


def test_gguf_q4_k_m_mix_loads_whole_and_sliced(tmp_path, small_chunks):
    pytest.importorskip("gguf")
    path, expected = q4_k_m_model(tmp_path, np.random.default_rng(1))
    model = load_model(str(path), dtype=torch.float32)
    for name, t in model.state_dict().items():
        assert torch.equal(t, expected[name]), name
    for rank in range(2):  # wo/w2 columns (128, 384) are not whole 256-value blocks: dequantized, then cut
        _, part = read_gguf(path, rank, 2, torch.bfloat16)
        for name, t in split_state(expected, rank, 2).items():
            assert torch.equal(part[name], t.to(torch.bfloat16)), (name, rank)


def test_meta_checkpoint_keeps_its_shard_count(tmp_path):
    ckpt = tiny_meta(tmp_path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(str(ckpt), 0, 2)
    assert "1 shard(s) but model-parallel size is 2" in one_line(e) and "--shards 2" in str(e.value)


@pytest.mark.parametrize("qtype", ["Q8_0", "F16"])
def test_gguf_tied_model_sliced_in_compute_dtype(tmp_path, small_chunks, qtype):
    gguf = pytest.importorskip("gguf")
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, tie_word_embeddings=True)
    state = random_state(args)
    state["output.weight"] = state["tok_embeddings.weight"]
    tensors = quantize_state(state, qtype)
    path = write_gguf(args, tensors, tmp_path / "m.gguf")
    expected = {n: torch.from_numpy(gguf.quants.dequantize(raw, t).copy()).reshape(state[n].shape)
                for n, (raw, t) in tensors.items()}
    assert (expected["layers.0.attention.wq.weight"] - state["layers.0.attention.wq.weight"]).abs().max() < 0.05
    args1, whole = read_gguf(path, dtype=torch.float16)
    assert args1.tie_word_embeddings and whole["output.weight"] is whole["tok_embeddings.weight"]
    for rank in range(2):  # Q8_0 blocks are 32 wide: the 32-column halves of wo/w2/embeddings are cut as bytes
        _, part = read_gguf(path, rank, 2, torch.float16)
        for name, t in split_state(expected, rank, 2).items():
            assert torch.equal(part[name], t.half()), (name, rank)


# ---------------------------------------------------------------------------------------------
# Damaged files: one line naming the file and the cause, whatever the damage


TINY = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16)


def tiny_gguf(path):
    """A valid one-layer llama GGUF of F32 tensors (no tokenizer)."""
    return write_gguf(TINY, quantize_state(random_state(TINY), "F32"), path)


def gguf_layout(path):
    """Byte offsets in a valid GGUF: its header counts, and per tensor where its dims and data offset are."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        dims_at = t.field.offset + 8 + len(t.name.encode()) + 4  # name length, name, n_dims
        tensors[t.name] = {"dims": dims_at, "offset": dims_at + 8 * len(t.shape) + 4}
    return tensors


def patched(path, at, fmt, value, out):
    import struct

    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, at, value)
    out.write_bytes(bytes(data))
    return out


def gguf_damages(tmp_path):
    good = tiny_gguf(tmp_path / "good.gguf")
    size = good.stat().st_size
    emb = gguf_layout(good)["token_embd.weight"]
    return {
        "magic": (patched(good, 0, "4s", b"GGUX", tmp_path / "magic.gguf"), "magic"),
        "version": (patched(good, 4, "I", 77, tmp_path / "version.gguf"), "version 77"),
        "tensor count": (patched(good, 8, "Q", 1 << 60, tmp_path / "tensors.gguf"), "announces"),
        "kv count": (patched(good, 16, "Q", 1 << 60, tmp_path / "kvs.gguf"), "announces"),
        "dimension": (patched(good, emb["dims"], "Q", 1 << 40, tmp_path / "dims.gguf"), "past the end"),
        "offset": (patched(good, emb["offset"], "Q", 1 << 50, tmp_path / "offset.gguf"), "past the end"),
        "body cut": (tmp_path / "body.gguf", "truncated"),
        "header cut": (tmp_path / "head.gguf", "truncated"),
    }, good.read_bytes(), size


@pytest.fixture
def damaged_ggufs(tmp_path):
    damages, data, size = gguf_damages(tmp_path)
    (tmp_path / "body.gguf").write_bytes(data[: size - 100])
    (tmp_path / "head.gguf").write_bytes(data[:40])
    return damages


@pytest.mark.parametrize("damage", ["magic", "version", "tensor count", "kv count", "dimension", "offset",
                                    "body cut", "header cut"])
def test_damaged_gguf_is_one_line(damaged_ggufs, damage):
    from llama.verify import VerifyError, trained_context

    path, cause = damaged_ggufs[damage]
    with pytest.raises(CheckpointError) as e:
        load_model(str(path))
    assert str(path) in one_line(e) and cause in str(e.value) and "download or convert it again" in str(e.value)
    with pytest.raises(VerifyError) as e:  # read before the model loads, for the context-length warning
        trained_context(path)
    assert str(path) in one_line(e) and cause in str(e.value)


def test_gguf_array_of_absurd_length_is_refused_not_read(tmp_path, monkeypatch):
    """The reader would loop over 2**60 values of an array whose announced length is absurd."""
    import struct

    import gguf

    real = gguf.GGUFWriter.add_uint32

    def add_uint32(self, key, value):
        real(self, key, value)
        if key == "llama.block_count":
            self.add_array("llama.extra", [7, 8, 9])

    monkeypatch.setattr(gguf.GGUFWriter, "add_uint32", add_uint32)
    good = tiny_gguf(tmp_path / "good.gguf")
    at = gguf.GGUFReader(str(good)).fields["llama.extra"].offset + 8 + len("llama.extra") + 4 + 4  # -> length
    assert struct.unpack_from("<Q", good.read_bytes(), at)[0] == 3
    bad = patched(good, at, "Q", 1 << 60, tmp_path / "bad.gguf")
    with pytest.raises(CheckpointError) as e:
        read_gguf(bad)
    assert "bad.gguf" in one_line(e) and "'llama.extra' announces 1152921504606846976 values" in str(e.value)


@pytest.mark.parametrize("key, value, message", [
    ("llama.embedding_length", None, "metadata key llama.embedding_length is missing"),
    ("llama.block_count", "1", "metadata key llama.block_count is '1' (str), expected a positive integer"),
    ("llama.feed_forward_length", None, "metadata key llama.feed_forward_length is missing"),
])
def test_gguf_missing_or_string_typed_keys(tmp_path, monkeypatch, key, value, message):
    import gguf

    real = gguf.GGUFWriter.add_uint32

    def add_uint32(self, k, v):
        if k != key:
            real(self, k, v)
        elif value is not None:
            self.add_string(k, value)

    monkeypatch.setattr(gguf.GGUFWriter, "add_uint32", add_uint32)
    path = tiny_gguf(tmp_path / "m.gguf")
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    assert one_line(e).startswith(str(path)) and message in str(e.value)


def test_gguf_script_error_is_one_line(tmp_path, root, default_model_dir, damaged_ggufs):
    """Through a script: the header is read (context length) before loading; still one line, exit 2."""
    path, _ = damaged_ggufs["kv count"]
    code, lines = run_direct_script(tmp_path, root, path, default_model_dir / "tokenizer.json")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines[-20:]


def test_truncated_safetensors(tmp_path):
    hf = tmp_path / "hf"
    write_hf(TINY, random_state(TINY), hf)
    st = hf / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-64])
    with pytest.raises(CheckpointError) as e:
        load_model(str(hf))
    assert str(st) in one_line(e) and "truncated" in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("hidden_size"), "hidden_size is missing"),
    (lambda c: c.update(num_hidden_layers="1"), "num_hidden_layers is '1' (str), expected a positive integer"),
    (lambda c: c.update(rms_norm_eps="1e-5"), "rms_norm_eps is '1e-5' (str), expected a number"),
    (lambda c: c.update(intermediate_size=None), "intermediate_size is missing"),
    (lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor is missing"),
])
def test_config_json_missing_key_or_string_for_a_number(tmp_path, change, message):
    hf = tmp_path / "hf"
    write_hf(TINY, random_state(TINY), hf)
    config = json.loads((hf / "config.json").read_text())
    change(config)
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        load_model(str(hf))
    assert one_line(e).startswith(str(hf / "config.json")) and message in str(e.value)


@pytest.mark.parametrize("text, cause", [
    ('{"hidden_size": 32,', "Expecting"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"hidden_size": ' + "9" * 5000 + "}", "digits"),
])
def test_config_json_that_does_not_parse(tmp_path, text, cause):
    hf = tmp_path / "hf"
    write_hf(TINY, random_state(TINY), hf)
    (hf / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as e:
        load_model(str(hf))
    assert one_line(e).startswith(f"{hf / 'config.json'} is not valid JSON") and cause in str(e.value)


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "/etc/passwd"])
def test_index_pointing_outside_the_checkpoint_is_refused_unopened(tmp_path, monkeypatch, name):
    hf = write_hf_two_files(TINY, random_state(TINY), tmp_path / "hf")
    (tmp_path / "outside.safetensors").write_bytes((hf / "model-00001-of-00002.safetensors").read_bytes())
    index = hf / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(data["weight_map"])[0]
    data["weight_map"][first] = name
    index.write_text(json.dumps(data))
    opened = []
    monkeypatch.setattr(llama.checkpoint, "_open_safetensors", lambda path: opened.append(path))
    with pytest.raises(CheckpointError) as e:
        read_hf(hf)
    assert str(index) in one_line(e) and repr(name) in str(e.value) and "outside the checkpoint folder" in str(e.value)
    assert opened == []
