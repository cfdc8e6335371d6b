"""Checkpoint verification: checklist.chk, finite weights, a tokenizer that fits, params vs config."""

import hashlib
import importlib.resources
import json
import shutil
from pathlib import Path

import pytest
import torch

from classification.backend.loader import check_model_files, load_lm
from classification.errors import ClassificationError
from llama.checkpoint import CheckpointError, load_model
from llama.model import ModelArgs, Transformer
from llama.tokenizer import SentencePieceTokenizer, TokenizerError, load_tokenizer
from llama.verify import allowed_rows, tensor_is_finite, verify_checklist


def tiny_meta(folder, vocab=96, poison=None):
    from llama.checkpoint import write_meta

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=vocab, multiple_of=16)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v, device="cpu") for k, v in Transformer(args).state_dict().items()}
    if poison is not None:
        state[poison][0, 0] = float("inf")
    write_meta(args, state, folder)
    return folder


def write_checklist(folder):
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir())]
    (folder / "checklist.chk").write_text("\n".join(lines) + "\n")


def test_checklist_catches_a_megabyte_of_zeros(tmp_path):
    ckpt = tiny_meta(tmp_path / "m")
    write_checklist(ckpt)
    assert verify_checklist(ckpt, show_progress=False) == 2
    pth = ckpt / "consolidated.00.pth"
    data = bytearray(pth.read_bytes())
    data[1000:1000 + 1024] = bytes(1024)  # zeros inside the tensor data
    pth.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth: md5 .* differs .*checklist\.chk"):
        verify_checklist(ckpt, show_progress=False)
    with pytest.raises(ClassificationError, match="md5"):
        load_lm(str(ckpt), str(ckpt / "params.json"), max_seq_len=64, max_batch_size=1, device="cpu")
    with pytest.raises(ClassificationError, match="has no checklist.chk"):
        load_lm(str(tmp_path), str(ckpt / "params.json"), max_seq_len=64, max_batch_size=1, device="cpu",
                verify_checkpoint=True)


def test_non_finite_weights_are_refused(tmp_path):
    ckpt = tiny_meta(tmp_path / "m", poison="layers.0.attention.wk.weight")
    with pytest.raises(CheckpointError, match=r"tensor layers\.0\.attention\.wk\.weight holds inf or NaN"):
        load_model(str(ckpt))
    load_model(str(tiny_meta(tmp_path / "ok")))


def test_finite_check_looks_at_every_block():
    t = torch.zeros(10, 7)
    assert tensor_is_finite(t, block=4)
    for at, bad in ((0, float("nan")), (39, float("inf")), (69, float("-inf"))):  # first, middle, last block
        u = t.clone()
        u.view(-1)[at] = bad
        assert not tensor_is_finite(u, block=4) and not tensor_is_finite(u)
    # Finite values whose sum overflows (the fast path's only false alarm) are still finite.
    big = torch.full((8,), 3e38)
    assert not torch.isfinite(big.sum()) and tensor_is_finite(big) and tensor_is_finite(big.to(torch.bfloat16))
    assert tensor_is_finite(torch.full((4096,), 60000.0, dtype=torch.float16))


def test_tokenizer_must_fit_the_embedding_up_to_padding(tmp_path):
    ckpt = tiny_meta(tmp_path / "m", vocab=192)
    for n_words in (192, 190, 150, 129):  # 192 is 190 and 150 padded to 64, 129 to 64/128
        load_model(str(ckpt), vocab_size=n_words)
    with pytest.raises(CheckpointError, match="tokenizer has 100 tokens .* 192-row embedding"):
        load_model(str(ckpt), vocab_size=100)  # half the rows unused: another tokenizer
    assert allowed_rows(32000) == (32000,) and 49152 not in allowed_rows(32000)


def test_mistral_tokenizer_with_the_smollm2_checkpoint(default_model_dir):
    src = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    if not src.is_file():
        pytest.skip("mistral_common ships no tokenizer.model.v1")
    tok = load_tokenizer(str(src))  # a SentencePiece model under a .v1 name
    assert isinstance(tok, SentencePieceTokenizer) and tok.n_words == 32000
    with pytest.raises(CheckpointError, match="tokenizer has 32000 tokens .* 49152-row embedding"):
        load_model(str(default_model_dir / "135M"), vocab_size=tok.n_words)


def test_foreign_tokenizer_files_are_one_line_errors(tmp_path):
    tekken = importlib.resources.files("mistral_common") / "data" / "tekken_240911.json"
    if tekken.is_file():
        with pytest.raises(TokenizerError, match="tekken") as e:
            load_tokenizer(str(tekken))
        assert "\n" not in str(e.value)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json") as e:
        load_tokenizer(tmp_path / "tokenizer.json")
    assert "\n" not in str(e.value)
    shutil.copy(tmp_path / "tokenizer.json", tmp_path / "tokenizer.model.v3")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "tokenizer.model.v3")


def test_params_json_that_contradicts_config_json(tmp_path):
    ckpt = tiny_meta(tmp_path / "m")
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "vocab_size": 96}
    (ckpt / "config.json").write_text(json.dumps(config))
    load_model(str(ckpt))
    (ckpt / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4, "num_key_value_heads": 1}))
    with pytest.raises(CheckpointError, match="n_heads 2 .* num_attention_heads 4"):
        load_model(str(ckpt))


def test_max_seq_len_above_the_trained_context_is_warned_about(tmp_path, capsys):
    ckpt = tiny_meta(tmp_path / "m")
    (ckpt / "config.json").write_text(json.dumps({"max_position_embeddings": 512, "num_attention_heads": 2}))
    check_model_files(str(ckpt), str(ckpt / "params.json"), 2048, None, None)
    err = capsys.readouterr().err
    assert "--max_seq_len 2048 is above the 512 tokens" in err and "config.json" in err
    check_model_files(str(ckpt), str(ckpt / "params.json"), 512, None, None)
    assert capsys.readouterr().err == ""


def test_trained_context_of_the_default_gguf(default_gguf):
    from llama.verify import trained_context

    assert trained_context(default_gguf) == (8192, str(default_gguf))


def test_install_default_reconverts_a_same_size_different_source(tmp_path, default_gguf, monkeypatch):
    import llama.convert as convert

    src = tmp_path / default_gguf.name
    shutil.copy(default_gguf, src)
    calls = []
    out = tmp_path / "out"

    def fake_convert(source, target, to):  # the conversion itself is tested in test_checkpoint
        calls.append(source)
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in ("params.json", "consolidated.00.pth"):
            (Path(target) / name).write_text("x")

    monkeypatch.setattr(convert, "convert", fake_convert)
    monkeypatch.setattr(convert, "write_tokenizer_from_gguf", lambda s, o: (out / "tokenizer.json").write_text("{}"))
    convert.install_default(str(tmp_path / "out"), str(src))
    convert.install_default(str(tmp_path / "out"), str(src))
    assert len(calls) == 1  # unchanged source: nothing rewritten
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF  # same size, other content
    src.write_bytes(bytes(data))
    convert.install_default(str(tmp_path / "out"), str(src))
    assert len(calls) == 2


def test_deep_config_json_beside_meta_weights_raises_no_recursion_error(tmp_path, monkeypatch):
    """config.json too deep to parse, beside a Meta checkpoint: the context-length probe and the
    params check leave it to the reader, and nothing escapes as a RecursionError."""
    from llama.verify import check_params_match_config, trained_context

    ckpt = tiny_meta(tmp_path / "m")
    (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert trained_context(ckpt) == (None, "")
    check_params_match_config(ckpt)
    check_model_files(str(ckpt), str(ckpt / "params.json"), 512, None, None)  # the loader's checks before loading
