"""Checkpoints in three layouts, all read into Meta's parameter names and layout.

- Meta: ``params.json`` + ``consolidated.NN.pth`` (one shard per model-parallel rank).
- HF: ``config.json`` + ``*.safetensors``; q/k rows are in HF's rotate-half order.
- GGUF (llama.cpp): tensors possibly quantized; q/k rows already in Meta's interleaved order.

Name conversion is a table plus one permutation (``permute_qk``); writers produce Meta (optionally
sharded) and HF directories, so any layout converts to any other (``write_gguf`` writes test and
benchmark GGUFs, without a tokenizer). HF and GGUF are read streamed: each model-parallel rank reads
only its own slice of each tensor, a few MiB at a time, in the compute dtype.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from llama import verify
from llama.errors import CheckpointError, first_line
from llama.model import ModelArgs, Transformer
from llama.parallel import no_weight_init, shard_dim
from llama.tokenizer import gguf_field, open_gguf

StateDict = Dict[str, Tensor]


def _read_json(path: Path, fix: str) -> Any:
    """The JSON value in ``path``; bad JSON (too deep, a number too long, not UTF-8) is one line with ``fix``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        cause = "nested too deeply"
    except UnicodeDecodeError:
        cause = "not UTF-8 text"
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        cause = first_line(e)
    except OSError as e:
        cause = f"cannot be read: {e.strerror or e}"
    raise CheckpointError(f"{path} is not valid JSON ({cause}); {fix}")


_REQUIRED = object()


def _setting(value: Any, key: str, source: object, kind: type = int) -> Any:
    """A checkpoint setting as ``kind`` (int: a positive integer; float: a finite number).  A missing
    one (``_REQUIRED``) or one of another type (a string, a bool, null) is one line naming ``source``."""
    if value is _REQUIRED:
        raise CheckpointError(f"{source}: {key} is missing; the file is incomplete or not a LLaMA-family model's: "
                              "download or convert it again")
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        need = "a positive integer" if kind is int else "a number"
        raise CheckpointError(f"{source}: {key} is {value!r} ({type(value).__name__}), expected {need}; "
                              "fix the file or download it again")
    return kind(value)


# Meta name pattern -> (HF name pattern, GGUF name pattern). "{i}" is the layer index.
NAME_TABLE = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "output.weight": ("lm_head.weight", "output.weight"),
    "layers.{i}.attention.wq.weight": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "layers.{i}.attention.wk.weight": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "layers.{i}.attention.wv.weight": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "layers.{i}.attention.wo.weight": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "layers.{i}.feed_forward.w1.weight": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "layers.{i}.feed_forward.w2.weight": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    "layers.{i}.feed_forward.w3.weight": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "layers.{i}.attention_norm.weight": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "layers.{i}.ffn_norm.weight": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
}
FORMATS = {"meta": -1, "hf": 0, "gguf": 1}


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")


_REGEX = {fmt: [(_pattern_regex(meta if col < 0 else names[col]), meta, names)
                for meta, names in NAME_TABLE.items()] for fmt, col in FORMATS.items()}


def convert_name(name: str, src: str, dst: str) -> Optional[str]:
    """Translate one parameter name between "meta", "hf" and "gguf"; None if not a model weight."""
    for regex, meta, names in _REGEX[src]:
        m = regex.match(name)
        if m:
            target = meta if FORMATS[dst] < 0 else names[FORMATS[dst]]
            return target.replace("{i}", m.group(1)) if m.groups() else target
    return None


def permute_qk(w: Tensor, n_heads: int, to_hf: bool) -> Tensor:
    """Reorder each head's rows between Meta's interleaved pairs and HF's rotate-half halves."""
    out_dim, in_dim = w.shape
    half = out_dim // n_heads // 2
    if to_hf:
        # row (head, i, pair) -> (head, pair, i)
        return w.view(n_heads, half, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
    return w.view(n_heads, 2, half, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# ---------------------------------------------------------------------------------------------
# Meta layout


def meta_shards(ckpt_dir: Path) -> list:
    return sorted(Path(ckpt_dir).glob("consolidated.*.pth"))


def count_shards(path: str) -> int:
    """Default model-parallel size: the shard count of a Meta checkpoint, 1 for HF and GGUF.

    HF and GGUF files are unsharded and every rank reads its own slice of them, so they run
    with any ``--model_parallel_size`` that divides the heads, FFN width and vocabulary.
    """
    p = Path(path)
    if p.is_dir() and (p / "params.json").exists():
        return max(1, len(meta_shards(p)))
    return 1


def read_params(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / "params.json"
    if not path.exists():
        raise CheckpointError(
            f"{path} not found: a Meta-layout checkpoint directory needs params.json beside its "
            "consolidated.NN.pth files (convert other layouts with `python -m llama.convert`)"
        )
    return _read_json(path, "restore it from the original download")


def read_meta(ckpt_dir: Path, mp_rank: int = 0, mp_size: int = 1) -> Tuple[ModelArgs, StateDict]:
    ckpt_dir = Path(ckpt_dir)
    params = read_params(ckpt_dir)
    shards = meta_shards(ckpt_dir)
    if not shards:
        raise CheckpointError(f"{ckpt_dir} has params.json but no consolidated.NN.pth files")
    if len(shards) != mp_size:
        raise CheckpointError(
            f"{ckpt_dir} has {len(shards)} shard(s) but model-parallel size is {mp_size}; run with "
            f"a multiple of {len(shards)} processes or re-shard with `python -m llama.convert convert {ckpt_dir} OUT --shards {mp_size}`"
        )
    path = shards[mp_rank]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for damaged zip archives
        raise CheckpointError(
            f"{path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); the file is "
            "truncated or damaged: download or convert it again"
        ) from None
    return ModelArgs.from_params(params), state


def shard_range(name: str, shape: Sequence[int], mp_rank: int, mp_size: int, source: object = "checkpoint") -> Tuple[Optional[int], slice]:
    """(split dimension, this rank's index range along it) of a full Meta parameter; (None, :) if replicated."""
    dim = shard_dim(name)
    if dim is None or mp_size == 1:
        return None, slice(None)
    size = int(shape[dim])
    if size % mp_size:
        raise CheckpointError(
            f"{source}: {name} has {size} along dimension {dim}, which model-parallel size {mp_size} does not divide; "
            "choose a --model_parallel_size that divides it"
        )
    step = size // mp_size
    return dim, slice(mp_rank * step, (mp_rank + 1) * step)


def check_parallel(args: ModelArgs, mp_size: int, source: object) -> None:
    """Shards must hold whole attention heads (q/k/v and the KV cache are split by head)."""
    for what, n in (("attention heads", args.n_heads), ("key/value heads", args.kv_heads)):
        if n % mp_size:
            raise CheckpointError(
                f"{source}: {n} {what} cannot be split over model-parallel size {mp_size}; use a size that divides {n}"
            )


CHUNK_BYTES = 1 << 24  # float32 bytes read (and dequantized) at a time; smaller chunks read slower


def _fill_rows(read: Callable[[int, int], Tensor], r0: int, r1: int, n_cols: int, dtype: Optional[torch.dtype]) -> Tensor:
    """A (r1 - r0, n_cols) tensor in ``dtype`` (None: the read dtype) from ``read(start, stop)`` -> those
    rows, a few MiB at a time, so a tensor never exists in float32 in full."""
    step = max(1, CHUNK_BYTES // (4 * n_cols))
    out = None
    for start in range(r0, r1, step):
        piece = read(start, min(start + step, r1))
        if out is None:
            out = torch.empty((r1 - r0, n_cols), dtype=dtype or piece.dtype)
        out[start - r0: start - r0 + piece.shape[0]] = piece  # casts while copying
    return out


def split_state(state: StateDict, mp_rank: int, mp_size: int) -> StateDict:
    """This rank's slice of a full (unsharded) state dict, in Meta's shard layout."""
    if mp_size == 1:
        return state
    out = {}
    for name, t in state.items():
        dim = shard_dim(name)
        out[name] = t if dim is None else t.chunk(mp_size, dim=dim)[mp_rank].clone()
    return out


def merge_shards(shards: list) -> StateDict:
    """Full state dict from Meta shards (inverse of ``split_state``)."""
    if len(shards) == 1:
        return dict(shards[0])
    return {name: shards[0][name] if shard_dim(name) is None
            else torch.cat([s[name] for s in shards], dim=shard_dim(name)) for name in shards[0]}


def write_meta(args: ModelArgs, state: StateDict, out_dir: Path, shards: int = 1) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in meta_shards(out_dir):
        old.unlink()
    for rank in range(shards):
        part = {k: v.contiguous() for k, v in split_state(state, rank, shards).items()}
        torch.save(part, out_dir / f"consolidated.{rank:02d}.pth")
    (out_dir / "params.json").write_text(json.dumps(args.to_params(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# HF layout


def _args_from_hf_config(cfg: dict, source: object = "config.json") -> ModelArgs:
    # transformers 5 moved rope settings into "rope_parameters"; 4.x used rope_theta/rope_scaling.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{source}: rope_scaling is {rope!r}, expected an object; fix the file or download it again")
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(f"{source} asks for rope type {rope_type!r}; only default and llama3 are supported")

    def get(key: str, kind: type = int, default: Any = _REQUIRED, where: dict = cfg) -> Any:
        value = where.get(key)
        return _setting(default if value is None else value, key, source, kind)

    n_heads = get("num_attention_heads")
    args = ModelArgs(
        dim=get("hidden_size"), n_layers=get("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads", default=n_heads),
        vocab_size=get("vocab_size"), norm_eps=get("rms_norm_eps", float, 1e-6),
        rope_theta=get("rope_theta", float, theta),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    if cfg.get("head_dim", args.head_dim) != args.head_dim:
        raise CheckpointError("config.json has head_dim != hidden_size / num_attention_heads, which LLaMA does not support")
    if rope_type == "llama3":
        args.use_scaled_rope = True
        args.rope_scale_factor = get("factor", float, where=rope)
        args.rope_low_freq_factor = get("low_freq_factor", float, where=rope)
        args.rope_high_freq_factor = get("high_freq_factor", float, where=rope)
        args.rope_original_max_seq_len = get("original_max_position_embeddings", where=rope)
    _set_ffn(args, get("intermediate_size"))
    return args


def _set_ffn(args: ModelArgs, hidden: int) -> None:
    """Express an FFN width through multiple_of when Meta's rule gives it, else explicitly."""
    for multiple_of in (256, 128, 64, 32):
        args.multiple_of = multiple_of
        if args.hidden_dim == hidden:
            return
    args.multiple_of, args.ffn_hidden_dim = 256, hidden


def _hf_config(args: ModelArgs) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "hidden_act": "silu",
        "max_position_embeddings": max(args.max_seq_len, args.rope_original_max_seq_len),
        "tie_word_embeddings": args.tie_word_embeddings, "torch_dtype": "float32",
        "attention_bias": False, "mlp_bias": False,
    }
    if args.use_scaled_rope:
        cfg["rope_scaling"] = {
            "rope_type": "llama3", "factor": args.rope_scale_factor,
            "low_freq_factor": args.rope_low_freq_factor, "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_seq_len,
        }
    return cfg


def _hf_files(model_dir: Path) -> list:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():  # multi-file checkpoints: read only the files the index names
        data = _read_json(index, "download it again")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map of file names); download it again")
        for name in sorted(set(weight_map.values())):
            # A name, not a path: the index may only point at files inside the checkpoint folder
            # (links placed there, as in the HF cache, are the folder owner's choice and are followed).
            inside = os.path.normpath(name)
            if os.path.isabs(name) or "\0" in name or inside == ".." or inside.startswith(".." + os.sep):
                raise CheckpointError(
                    f"{index} points at {name!r}, outside the checkpoint folder {model_dir}; refusing to read it: "
                    "download the index again"
                )
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names {', '.join(missing)}, which is missing: download it")
        return files
    return sorted(model_dir.glob("*.safetensors"))


def _open_safetensors(path: Path) -> Any:
    """``safe_open`` of one file; a truncated or damaged file is one line naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # noqa: BLE001 - SafetensorError is a bare Exception; OSError for unreadable files
        raise CheckpointError(
            f"{path} could not be read ({first_line(e)}); the file is truncated or damaged: download or convert it again"
        ) from None


def read_hf_config(model_dir: Path) -> ModelArgs:
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path} not found: an HF-layout directory needs config.json")
    cfg = _read_json(cfg_path, "download it again")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object; download it again")
    if cfg.get("model_type", "llama") not in ("llama", "mistral"):
        raise CheckpointError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not a LLaMA-family model")
    return _args_from_hf_config(cfg, cfg_path)


def read_hf(
    model_dir: Path, mp_rank: int = 0, mp_size: int = 1, dtype: Optional[torch.dtype] = None
) -> Tuple[ModelArgs, StateDict]:
    """This rank's shard, read tensor by tensor: only its rows/columns leave the file, cast to ``dtype``.

    q/k rows are permuted from HF's rotate-half order within each head; shards hold whole heads,
    so permuting the slice with the shard's head count equals slicing the permuted matrix.
    """
    model_dir = Path(model_dir)
    args = read_hf_config(model_dir)
    check_parallel(args, mp_size, model_dir)
    files = _hf_files(model_dir)
    if not files:
        raise CheckpointError(f"{model_dir} has config.json but no *.safetensors files")
    where: Dict[str, Tuple[Path, str]] = {}  # Meta name -> (file, HF name)
    for f in files:
        with _open_safetensors(f) as sf:
            for name in sf.keys():
                meta = convert_name(name, "hf", "meta")
                if meta is not None:
                    where[meta] = (f, name)
    if "output.weight" not in where and "tok_embeddings.weight" in where:
        where["output.weight"] = where["tok_embeddings.weight"]
        args.tie_word_embeddings = True
    state: StateDict = {}
    for meta, (f, name) in where.items():
        if meta == "output.weight" and args.tie_word_embeddings and mp_size == 1:
            state[meta] = state["tok_embeddings.weight"]  # one tensor, as in the tied model
            continue
        with _open_safetensors(f) as sf:
            part = sf.get_slice(name)
            shape = part.get_shape()
            if len(shape) == 1:  # norms: replicated, small
                state[meta] = part[:].to(dtype) if dtype is not None else part[:]
                continue
        dim, rng = shard_range(meta, shape, mp_rank, mp_size, f)
        rows = rng if dim == 0 else slice(0, shape[0])
        cols = rng if dim == 1 else slice(None)

        def read(start: int, stop: int, f: Path = f, name: str = name, cols: slice = cols) -> Tensor:
            # One open per chunk: safetensors maps the whole file and unmaps it on close, so the
            # pages just read leave the process's memory before the next chunk.
            with _open_safetensors(f) as sf:
                return sf.get_slice(name)[start:stop, cols]

        t = _fill_rows(read, rows.start, rows.stop, shape[1] if dim != 1 else rng.stop - rng.start, dtype)
        if meta.endswith("attention.wq.weight"):
            t = permute_qk(t, args.n_heads // mp_size, to_hf=False)
        elif meta.endswith("attention.wk.weight"):
            t = permute_qk(t, args.kv_heads // mp_size, to_hf=False)
        state[meta] = t
    return args, state


def write_hf(args: ModelArgs, state: StateDict, out_dir: Path) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in state.items():
        if name == "output.weight" and args.tie_word_embeddings:
            if not torch.equal(t, state["tok_embeddings.weight"]):
                raise CheckpointError("params say tie_word_embeddings but output.weight differs from tok_embeddings.weight")
            continue  # HF stores a tied head once, as the embedding
        if name.endswith("attention.wq.weight"):
            t = permute_qk(t, args.n_heads, to_hf=True)
        elif name.endswith("attention.wk.weight"):
            t = permute_qk(t, args.kv_heads, to_hf=True)
        tensors[convert_name(name, "meta", "hf")] = t.contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(_hf_config(args), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# GGUF


def _read_gguf_tensor(f, t, meta: str, path: Path, mp_rank: int, mp_size: int, dtype: Optional[torch.dtype]) -> Tensor:
    """Read, dequantize and slice one tensor, a few rows at a time; only this rank's rows are read."""
    import gguf
    import numpy as np

    shape = [int(d) for d in reversed(t.shape)]  # ggml lists the fastest dimension first
    dim, rng = shard_range(meta, shape, mp_rank, mp_size, path)
    block, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    n_rows, n_cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    row_bytes = n_cols // block * type_size
    rows = rng if dim == 0 else slice(0, n_rows)
    cols = rng if dim == 1 else slice(0, n_cols)
    # whole quantization blocks: cut the bytes and dequantize only this rank's columns
    by_bytes = cols.start % block == 0 and cols.stop % block == 0
    byte_cols = slice(cols.start // block * type_size, cols.stop // block * type_size) if by_bytes else slice(None)

    def read(start: int, stop: int) -> Tensor:
        raw = np.empty((stop - start, row_bytes), dtype=np.uint8)  # (rows, bytes per row)
        f.seek(t.data_offset + start * row_bytes)
        if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
            raise CheckpointError(f"{path}: tensor {t.name} is cut short; the file is truncated: download it again")
        try:
            values = gguf.quants.dequantize(np.ascontiguousarray(raw[:, byte_cols]), t.tensor_type)  # float32
        except NotImplementedError:
            raise CheckpointError(
                f"{path}: tensor {t.name} has type {t.tensor_type.name}, which gguf {_gguf_version()} cannot "
                "dequantize; re-quantize the file, e.g. to Q8_0, Q4_K or F16"
            ) from None
        piece = torch.from_numpy(values).reshape(stop - start, -1)
        return piece if by_bytes else piece[:, cols]

    out = _fill_rows(read, rows.start, rows.stop, cols.stop - cols.start, dtype or torch.float32)
    return out if len(shape) == 2 else out.reshape(shape)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def read_gguf(
    path: Path, mp_rank: int = 0, mp_size: int = 1, dtype: Optional[torch.dtype] = None
) -> Tuple[ModelArgs, StateDict]:
    """This rank's shard, tensor by tensor: read its rows, dequantize, slice, cast to ``dtype``.

    Every type ``gguf.quants.dequantize`` knows loads (F32/F16/BF16, Q4_0...Q8_0, the K-quants
    Q2_K...Q6_K, IQ*, TQ*, MXFP4); the whole model is never held in float32.
    """
    path = Path(path)
    reader = open_gguf(path, CheckpointError)
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: architecture {arch!r} is not llama")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else -1  # -1: the embedding's rows (load_model)

    def get(key: str, kind: type = int, default: Any = _REQUIRED) -> Any:
        return _setting(gguf_field(reader, f"llama.{key}", default), f"metadata key llama.{key}", path, kind)

    n_heads = get("attention.head_count")
    vocab_size = get("vocab_size") if "llama.vocab_size" in reader.fields else n_tokens
    args = ModelArgs(
        dim=get("embedding_length"), n_layers=get("block_count"), n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", default=n_heads), vocab_size=vocab_size,
        norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
        rope_theta=get("rope.freq_base", float, 10000.0),
    )
    _set_ffn(args, get("feed_forward_length"))
    check_parallel(args, mp_size, path)
    tensors = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise CheckpointError(f"{path}: Llama-3.1 rope frequency tables in GGUF are not supported; convert from the HF or Meta checkpoint")
        meta = convert_name(t.name, "gguf", "meta")
        if meta is not None:
            if len(t.shape) > 2:
                raise CheckpointError(f"{path}: tensor {t.name} has {len(t.shape)} dimensions, not 1 or 2; "
                                      "the file is damaged: download or convert it again")
            tensors[meta] = t
    if "output.weight" not in tensors and "tok_embeddings.weight" in tensors:
        tensors["output.weight"] = tensors["tok_embeddings.weight"]
        args.tie_word_embeddings = True
    state: StateDict = {}
    with open(path, "rb") as f:  # plain reads, not the reader's memory map: read pages do not stay resident
        for meta, t in tensors.items():
            if meta == "output.weight" and args.tie_word_embeddings and mp_size == 1:
                state[meta] = state["tok_embeddings.weight"]
                continue
            state[meta] = _read_gguf_tensor(f, t, meta, path, mp_rank, mp_size, dtype)
    return args, state


def write_gguf(args: ModelArgs, tensors: Dict[str, tuple], path: Path) -> Path:
    """A llama GGUF (no tokenizer) of ``tensors``: Meta name -> (array in torch order, type).

    The array is float for F32/F16 and the raw blocks, (rows, bytes per row) uint8, for any other
    type (see :func:`quantize_state`). q/k rows stay in Meta's order, as llama.cpp stores them.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, val in [("embedding_length", args.dim), ("block_count", args.n_layers),
                     ("attention.head_count", args.n_heads), ("attention.head_count_kv", args.kv_heads),
                     ("feed_forward_length", args.hidden_dim), ("vocab_size", args.vocab_size)]:
        w.add_uint32(f"llama.{key}", val)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", args.norm_eps)
    w.add_float32("llama.rope.freq_base", args.rope_theta)
    for name, (data, qtype) in tensors.items():
        if name == "output.weight" and args.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd
        float_type = qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        w.add_tensor(convert_name(name, "meta", "gguf"), data, raw_dtype=None if float_type else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def quantize_state(state: StateDict, qtype: str = "F16") -> Dict[str, tuple]:
    """Meta state dict -> :func:`write_gguf` tensors: matrices as ``qtype`` (a type gguf can
    quantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), norms F32 as llama.cpp keeps them."""
    import gguf

    T = gguf.GGMLQuantizationType
    out = {}
    for name, t in state.items():
        kind = T.F32 if t.dim() == 1 else T[qtype]
        out[name] = (gguf.quants.quantize(t.float().numpy(), kind), kind)
    return out


# ---------------------------------------------------------------------------------------------
# Any layout


def checkpoint_format(path: str) -> str:
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    if p.is_dir():
        if (p / "config.json").exists() and any(p.glob("*.safetensors")):
            return "hf"
        if (p / "params.json").exists() or any(p.glob("consolidated.*.pth")):
            return "meta"
        ggufs = list(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
    if not p.exists():
        raise CheckpointError(f"{path} does not exist; pass --ckpt_dir a Meta/HF checkpoint directory or a .gguf file (run `make setup` for the default model)")
    raise CheckpointError(
        f"{path} is not a checkpoint: expected params.json + consolidated.NN.pth, or config.json + "
        "*.safetensors, or a .gguf file"
    )


def read_checkpoint(
    path: str, mp_rank: int = 0, mp_size: int = 1, dtype: Optional[torch.dtype] = None
) -> Tuple[ModelArgs, StateDict]:
    """(ModelArgs, this rank's state dict in Meta names) from any supported layout.

    HF and GGUF are read streamed, this rank's slice only, each tensor cast to ``dtype`` as it is
    read (None: HF's stored dtype, float32 for GGUF). Meta shards are memory-mapped as stored.
    """
    fmt = checkpoint_format(path)
    if fmt == "meta":
        return read_meta(Path(path), mp_rank, mp_size)
    p = Path(path)
    if fmt == "gguf" and p.is_dir():
        p = next(p.glob("*.gguf"))
    return (read_hf if fmt == "hf" else read_gguf)(p, mp_rank, mp_size, dtype)


def load_model(
    path: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    mp_rank: int = 0,
    mp_size: int = 1,
    max_seq_len: int = 2048,
    max_batch_size: int = 32,
    vocab_size: Optional[int] = None,
) -> Transformer:
    """Build on the meta device, load with assign=True (no second copy), move to device/dtype.

    HF and GGUF weights are read in ``dtype`` a few MiB at a time, so host memory peaks at about
    this rank's shard in ``dtype``.

    vocab_size: the tokenizer's vocabulary size, checked against the checkpoint (and used when
    params.json leaves it at -1, as LLaMA-1's does).
    """
    args, state = read_checkpoint(path, mp_rank, mp_size, dtype)
    args.max_seq_len, args.max_batch_size = max_seq_len, max_batch_size
    emb_rows = state["tok_embeddings.weight"].shape[0] if "tok_embeddings.weight" in state else None
    if args.vocab_size <= 0:
        args.vocab_size = emb_rows or vocab_size or -1
    try:  # llama.verify: a tokenizer that fits, params that agree with config.json, finite weights
        if vocab_size is not None:
            verify.check_vocab(vocab_size, emb_rows or args.vocab_size, path)
        verify.check_params_match_config(path)
        verify.check_finite(state.items(), path)
    except verify.VerifyError as e:
        raise CheckpointError(str(e)) from None
    with torch.device("meta"), no_weight_init():
        model = Transformer(args)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match params ({str(e).splitlines()[0]}...)") from None
    model = model.to(device=device, dtype=dtype)
    if args.tie_word_embeddings and mp_size == 1:
        model.output.weight = model.tok_embeddings.weight
    return model.eval().requires_grad_(False)
