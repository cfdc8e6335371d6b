"""Shared fixtures: the project root, the offline data beside it, the embedded default model."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("offline data (../shared/data) not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from llama.convert import default_gguf_path

    try:
        return default_gguf_path()
    except Exception as e:  # not installed: `make setup` installs it
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def hf_default_model(default_gguf):
    """transformers' own reading of the default GGUF (fp32, eval): the independent reference of the
    model tests, loaded once per session (each load dequantizes the whole file)."""
    transformers = pytest.importorskip("transformers")
    import torch

    return transformers.AutoModelForCausalLM.from_pretrained(
        default_gguf.parent, gguf_file=default_gguf.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_default_tokenizer(default_gguf):
    """transformers' tokenizer read from the default GGUF, loaded once per session."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory, default_gguf) -> Path:
    """The default model converted to Meta layout + tokenizer.json (reuses checkpoints/ if set up)."""
    from llama.convert import install_default

    installed = ROOT / "checkpoints" / "smollm2"
    if (installed / "source.json").exists():
        return installed
    out = tmp_path_factory.mktemp("smollm2")
    install_default(str(out), str(default_gguf))
    return out


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
