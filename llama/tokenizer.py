"""Tokenizers for LLaMA-family models behind one small interface.

Classification only needs ``encode``/``decode`` and the ids of a few special tokens, but checkpoints
ship their vocabulary in different forms: Meta's LLaMA-1/2 use a SentencePiece ``tokenizer.model``,
newer models (Llama-3, SmolLM2, ...) a Hugging Face ``tokenizer.json``, and GGUF files carry only
raw vocabulary metadata.  ``load_tokenizer`` picks the backend from the file it is given, and
``tokenizer_json_from_gguf`` turns GGUF metadata into a ``tokenizer.json`` so the HF backend can
serve GGUF models too.

Both backends follow Meta's convention: ``encode(s, bos, eos)`` never adds special tokens on its own;
the caller decides, and ``add_bos`` tells it what the model was trained with.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

from llama.errors import first_line

__all__ = [
    "Tokenizer",
    "SentencePieceTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "tokenizer_json_from_gguf",
    "write_tokenizer_from_gguf",
]

_USAGE = "pass a tokenizer.model (SentencePiece), a tokenizer.json (Hugging Face) or a directory holding one"


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file and the fix."""


class Tokenizer:
    """Common interface: what the model runner needs, independent of the vocabulary format."""

    bos_id: int
    eos_id: int
    n_words: int
    add_bos: bool  # whether the model was trained with BOS prepended to every sequence

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        """Token ids of ``s``; BOS/EOS are added only when asked, never implicitly."""
        ids = self._encode(s)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_many(self, texts: list[str], bos: bool) -> list[list[int]]:
        """``encode`` of many texts at once (backends with a batch encoder run it in parallel)."""
        head = [self.bos_id] if bos else []
        return [head + ids for ids in self._encode_many(texts)]

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special/control tokens (BOS, EOS, ...) are dropped, as SentencePiece does."""
        return self._decode([int(i) for i in ids])

    def _encode(self, s: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_words={self.n_words}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
                f"add_bos={self.add_bos})")


class SentencePieceTokenizer(Tokenizer):
    """LLaMA-1/2 ``tokenizer.model``, used exactly as Meta's reference code does."""

    def __init__(self, path: str | Path):
        from sentencepiece import SentencePieceProcessor

        self.path = str(path)
        self.sp_model = SentencePieceProcessor(model_file=self.path)
        self.n_words = self.sp_model.vocab_size()
        self.bos_id = self.sp_model.bos_id()
        self.eos_id = self.sp_model.eos_id()
        self.add_bos = True

    def _encode(self, s: str) -> list[int]:
        assert isinstance(s, str), f"expected str, got {type(s).__name__}"
        return self.sp_model.encode(s)

    def _decode(self, ids: list[int]) -> str:
        return self.sp_model.decode(ids)


# Fallback names, most specific first, for vocabularies that come without any config naming them.
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>")


def _token_str(value: Any) -> Optional[str]:
    """A special token from a HF config: a plain string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` run through the ``tokenizers`` library.

    Special-token settings are read from a sibling ``tokenizer_config.json`` (as HF repos ship it and
    as ``write_tokenizer_from_gguf`` writes it) or ``special_tokens_map.json``; ``config`` overrides
    them.  Without either, ids are guessed from common token names.
    """

    def __init__(self, path: str | Path, config: Optional[dict] = None):
        from tokenizers import Tokenizer as _HFTok

        self.path = str(path)
        self._init(_HFTok.from_file(self.path), Path(path).parent, config)

    @classmethod
    def from_gguf(cls, gguf_path: str | Path) -> "HFTokenizer":
        """Build directly from a GGUF file's vocabulary, without writing files."""
        from tokenizers import Tokenizer as _HFTok

        text, config = tokenizer_json_from_gguf(open_gguf(gguf_path, TokenizerError))
        self = cls.__new__(cls)
        self.path = str(gguf_path)
        self._init(_HFTok.from_str(text), None, config)
        return self

    def _init(self, tok: Any, folder: Optional[Path], config: Optional[dict]) -> None:
        self.tok = tok
        if tok.decoder is None and "ByteLevel" in repr(tok.pre_tokenizer):
            from tokenizers import decoders  # byte symbols like "Ġ" must map back to UTF-8 text

            tok.decoder = decoders.ByteLevel()
        cfg: dict = {}
        if folder is not None:  # the later file wins: tokenizer_config.json is the more specific one
            cfg.update({k: v for k, v in _read_json(folder / "special_tokens_map.json").items() if v is not None})
            cfg.update({k: v for k, v in _read_json(folder / "tokenizer_config.json").items() if v is not None})
        cfg.update(config or {})
        self.n_words = tok.get_vocab_size(with_added_tokens=True)

        # What the post-processor prepends when HF's default add_special_tokens=True is used is, by
        # definition, this tokenizer's BOS convention (Llama-3's TemplateProcessing "<|begin_of_text|> $A").
        plain = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a", add_special_tokens=True).ids
        lead = full[0] if len(full) > len(plain) and full[1:1 + len(plain)] == plain else None

        def lookup(key: str, names: tuple[str, ...], default: Optional[int] = None) -> Optional[int]:
            name = _token_str(cfg.get(key))
            if name is not None:
                tid = tok.token_to_id(name)
                if tid is None:
                    raise ValueError(f"{self.path}: {key} {name!r} from the tokenizer config is not in the vocabulary")
                return tid
            if default is not None:
                return default
            return next((t for t in map(tok.token_to_id, names) if t is not None), None)

        eos = lookup("eos_token", _EOS_NAMES)
        bos = lookup("bos_token", _BOS_NAMES, default=lead)
        if bos is None and eos is None:
            raise ValueError(f"{self.path}: cannot tell BOS/EOS tokens; write a tokenizer_config.json next to it "
                             f"with bos_token and eos_token")
        self.bos_id = bos if bos is not None else eos
        self.eos_id = eos if eos is not None else bos
        self.add_bos = lead == self.bos_id or cfg.get("add_bos_token") is True

    def _encode(self, s: str) -> list[int]:
        assert isinstance(s, str), f"expected str, got {type(s).__name__}"
        return self.tok.encode(s, add_special_tokens=False).ids

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        # The tokenizer.json's decoder (ByteLevel for GPT-2-style BPE) maps byte symbols such as "Ġ"
        # back to UTF-8 text; a byte-level vocabulary without a decoder would leak those symbols.
        return self.tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The right backend for ``path``: ``.model`` → SentencePiece, ``.json`` → HF, ``.gguf`` → HF built
    from the GGUF vocabulary; a directory is searched for ``tokenizer.model`` then ``tokenizer.json``
    (the former first, since LLaMA-1/2 checkpoints that carry both were trained with it)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Tokenizer not found: {p}; {_USAGE}")
    if p.is_dir():
        for name in ("tokenizer.model", "tokenizer.json"):
            if (p / name).is_file():
                return load_tokenizer(p / name)
        raise FileNotFoundError(f"No tokenizer.model or tokenizer.json in directory {p}; {_USAGE}")
    suffix = p.suffix.lower()
    # Mistral ships SentencePiece models as tokenizer.model.v1, .v3, ...
    if suffix == ".model" or re.fullmatch(r"\.model\.v\d+\w*", "".join(p.suffixes[-2:]).lower()):
        try:
            return SentencePieceTokenizer(p)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{p}: not a SentencePiece model ({first_line(e)}); {_USAGE}") from None
    if suffix == ".json":
        try:
            return HFTokenizer(p)
        except Exception as e:  # the tokenizers library raises bare Exceptions on foreign JSON
            head = _read_json_quietly(p)  # read again only to name the format
            if isinstance(head, dict) and "vocab" in head and "config" in head and "model" not in head:
                raise TokenizerError(f"{p} is a Mistral tekken tokenizer, which is not supported; {_USAGE}") from None
            raise TokenizerError(f"{p}: not a Hugging Face tokenizer.json ({first_line(e)}); {_USAGE}") from None
    if suffix == ".gguf":
        try:
            return HFTokenizer.from_gguf(p)
        except TokenizerError:
            raise
        except NotImplementedError as e:  # a vocabulary kind this module cannot rebuild
            raise TokenizerError(f"{p}: {first_line(e)}; {_USAGE}") from None
        except Exception as e:  # noqa: BLE001 - missing or mistyped vocabulary keys fail anywhere in the rebuild
            raise TokenizerError(f"{p}: the GGUF vocabulary cannot be read ({first_line(e)}); {_USAGE}") from None
    raise TokenizerError(f"Unknown tokenizer file type {p.name!r} ({p}); {_USAGE}")


def _read_json_quietly(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------------------------- GGUF

# llama.cpp splits text with its own regex list per `tokenizer.ggml.pre`; these are the HF equivalents.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre name -> (isolate every digit first, split regex or None for ByteLevel's built-in GPT-2 regex)
_PRE = {
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"), (True, None)),
    **dict.fromkeys(("default", "gpt2", "gpt-2", "mpt", "olmo", "jais"), (False, None)),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3", "pixtral"),
                    (False, _LLAMA3_SPLIT)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), (False, _QWEN2_SPLIT)),
}
_IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3", "pixtral"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character map: printable Latin-1 bytes stand for themselves, the
    other bytes take the code points from 256 upward, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def gguf_field(reader: Any, name: str, default: Any = None) -> Any:
    """A GGUF metadata value (``gguf.GGUFReader``), or ``default`` when the key is absent."""
    field = reader.fields.get(name)
    return default if field is None else field.contents()


# GGUF metadata value types (gguf.GGUFValueType) of a fixed size -> their bytes; 8 is a string, 9 an array.
_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4
_GGUF_MAX_DIMS, _GGUF_MAX_NESTING = 4, 8


class _BadGGUF(Exception):
    """What is wrong with a GGUF file's layout (the message completes "<file>: ...")."""


def _gguf_layout_problem(path: Path) -> Optional[str]:
    """Why the GGUF file at ``path`` cannot be read safely, or None: magic, version, counts, every
    metadata value and tensor description inside the file, every tensor's bytes inside the file.

    Checked before ``gguf.GGUFReader`` sees the file: the reader raises assorted exceptions on
    damaged headers and loops for a very long time on an array whose length is absurd.
    """
    import mmap
    import struct

    import gguf

    size = path.stat().st_size
    if size < 24:
        return f"{size} bytes, too short for a GGUF header"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF":
            return "it does not start with the GGUF magic bytes"
        order = "<" if struct.unpack_from("<I", m, 4)[0] & 0xFFFF else ">"  # as the reader tells byte order

        def read(fmt: str, at: int) -> tuple:
            end = at + struct.calcsize(order + fmt)
            if end > size:
                raise _BadGGUF(f"its header is cut short at byte {size} (the file is truncated)")
            return struct.unpack_from(order + fmt, m, at), end

        def skip_string(at: int) -> tuple:
            (n,), at = read("Q", at)
            if n > size - at:
                raise _BadGGUF(f"a string of {n} bytes at byte {at} runs past the end of the file ({size} bytes)")
            return bytes(m[at: at + n]).decode("utf-8", "replace"), at + n

        def skip_value(kind: int, at: int, key: str, depth: int = 0) -> int:
            if kind in _GGUF_SCALAR_BYTES:
                return read(f"{_GGUF_SCALAR_BYTES[kind]}x", at)[1]
            if kind == _GGUF_STRING:
                return skip_string(at)[1]
            if kind != _GGUF_ARRAY or depth >= _GGUF_MAX_NESTING:
                raise _BadGGUF(f"metadata key {key!r} has unknown value type {kind}")
            (item, count), at = read("IQ", at)
            least = _GGUF_SCALAR_BYTES.get(item, 8)  # a string or an array takes 8 bytes or more
            if count > (size - at) // least:
                raise _BadGGUF(f"metadata key {key!r} announces {count} values, more than the file can hold")
            if item in _GGUF_SCALAR_BYTES:
                return at + count * least
            if item == _GGUF_STRING:  # vocabularies: tens of thousands of strings, in a tight loop
                length = struct.Struct(order + "Q").unpack_from
                for _ in range(count):
                    at += 8 + (length(m, at)[0] if at + 8 <= size else size)
                    if at > size:
                        raise _BadGGUF(f"metadata key {key!r} runs past the end of the file ({size} bytes)")
                return at
            for _ in range(count):
                at = skip_value(item, at, key, depth + 1)
            return at

        (version, n_tensors, n_kv), at = read("IQQ", 4)
        if version not in (2, 3):
            return f"GGUF version {version} is not supported (2 or 3)"
        if n_kv * 13 + n_tensors * 25 > size - at:  # the smallest key and tensor description
            return (f"its header announces {n_tensors} tensors and {n_kv} metadata keys, more than {size} bytes "
                    "can hold (the file is truncated or damaged)")
        alignment = 32
        for _ in range(n_kv):
            key, at = skip_string(at)
            (kind,), at = read("I", at)
            if key == "general.alignment" and kind == _GGUF_UINT32:
                alignment = read("I", at)[0][0]
            at = skip_value(kind, at, key)
        tensors = []
        for _ in range(n_tensors):
            name, at = skip_string(at)
            (n_dims,), at = read("I", at)
            if not 1 <= n_dims <= _GGUF_MAX_DIMS:
                return f"tensor {name!r} has {n_dims} dimensions (1 to {_GGUF_MAX_DIMS})"
            dims, at = read(f"{n_dims}Q", at)
            (kind, offset), at = read("IQ", at)
            tensors.append((name, dims, kind, offset))
        if alignment < 1 or alignment & (alignment - 1):
            return f"general.alignment {alignment} is not a power of two"
        start = -(-at // alignment) * alignment
        for name, dims, kind, offset in tensors:
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                return f"tensor {name!r} has unknown type {kind}"
            if min(dims) < 1 or dims[0] % block:
                return f"tensor {name!r} has dimensions {list(dims)}, not whole blocks of {block} values of its type"
            end = start + offset + math.prod(dims) // block * type_size
            if end > size:
                return (f"tensor {name!r} ({list(dims)} at offset {offset}) ends at byte {end}, past the end of the "
                        f"file ({size} bytes): the file is truncated or damaged")
    return None


def open_gguf(path: str | Path, error: type = ValueError) -> Any:
    """``gguf.GGUFReader`` of ``path`` after :func:`_gguf_layout_problem`'s checks; a damaged file
    raises ``error`` with one line naming the file, the cause and the fix."""
    import gguf

    p = Path(path)
    try:
        problem = _gguf_layout_problem(p)
        if problem is None:
            return gguf.GGUFReader(str(p))
    except _BadGGUF as e:
        problem = str(e)
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, KeyError, IndexError... on bad files
        problem = f"{type(e).__name__}: {first_line(e)}"
    raise error(f"{p}: not a usable GGUF file: {problem}; download or convert it again")


def tokenizer_json_from_gguf(reader: Any) -> tuple[str, dict]:
    """A HF ``tokenizer.json`` text rebuilt from a GGUF vocabulary, plus its special-token settings.

    The dict is meant to be saved as ``tokenizer_config.json`` next to the JSON (``HFTokenizer`` reads
    it): ``bos_token``/``eos_token``/``unk_token``/``pad_token`` as strings and ``add_bos_token``.
    Only byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is supported.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as _HFTok

    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind is None:
        raise NotImplementedError("the GGUF file holds no tokenizer vocabulary (no tokenizer.ggml.model key)")
    if kind == "llama":
        raise NotImplementedError("GGUF holds a SentencePiece vocabulary (tokenizer.ggml.model='llama'); "
                                  "use the original tokenizer.model with SentencePieceTokenizer instead")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' BPE)")
    tokens: list[str] = gguf_field(reader, "tokenizer.ggml.tokens")
    types: list[int] = gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges", [])]
    pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE:
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is unknown; falling back to GPT-2's split, which may differ")
    digits, split = _PRE.get(pre, (False, None))

    # GGUF stores byte-level tokens already spelled in GPT-2's byte alphabet; respell any that is not
    # (raw text), except control tokens, which are matched verbatim as added tokens anyway.
    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    vocab = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty != _CONTROL and not set(t) <= letters:
            t = "".join(alphabet[b] for b in t.encode("utf-8"))
        vocab.setdefault(t, i)

    def tok_id(key: str) -> Optional[int]:
        v = gguf_field(reader, f"tokenizer.ggml.{key}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    bos, eos, unk, pad = (tok_id(k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"))
    add_bos = bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False))

    tok = _HFTok(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False,
                            ignore_merges=pre in _IGNORE_MERGES))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    if add_bos and bos is not None:  # so plain HF users of the file get the same BOS convention
        b = tokens[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=[b, "$A"], pair=[b, "$A", f"{b}:1", "$B:1"], special_tokens=[(b, bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {name: tokens[i] for name, i in
              (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)) if i is not None}
    config["add_bos_token"] = add_bos
    return tok.to_str(), config


def write_tokenizer_from_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for a GGUF model into ``out_dir``;
    returns the ``tokenizer.json`` path, ready for ``load_tokenizer``."""
    if not Path(gguf_path).is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    text, config = tokenizer_json_from_gguf(open_gguf(gguf_path, TokenizerError))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return out / "tokenizer.json"
