"""Peak host memory while loading a checkpoint, per rank, against the model's size.

    python benchmarks/bench_loading.py run benchmarks/llama-200m-params.json --layouts '["hf","gguf-F16"]'
    python benchmarks/bench_loading.py write PARAMS OUT --layout gguf-Q8_0     # just write a checkpoint
    python benchmarks/bench_loading.py load CKPT --dtype bf16 [--mp_size 2]   # under torchrun for mp > 1

``run`` writes a random checkpoint of the shape in PARAMS (HF safetensors in float32, or GGUF of
a given type) into a temporary folder, then loads it in fresh processes under ``/usr/bin/time -v``
(one per rank, via ``torchrun --no-python`` for mp > 1) and reads "Maximum resident set size".
A baseline process does everything except reading weights (imports, process group, model built on
the meta device), so "loading" = peak - baseline is what reading the weights costs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import fire
import torch

ROOT = Path(__file__).resolve().parents[1]
from llama.model import ModelArgs, Transformer
from llama.runtime import resolve_dtype, setup_runtime

MiB = 2**20


def write(params: str, out: str, layout: str = "hf", seed: int = 0) -> str:
    """Write a random checkpoint: ``hf`` (float32 safetensors) or ``gguf-TYPE`` (e.g. gguf-F16, gguf-Q8_0)."""
    from llama.checkpoint import quantize_state, write_gguf, write_hf

    args = ModelArgs.from_params(json.loads(Path(params).read_text()))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(args).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    Path(out).mkdir(parents=True, exist_ok=True)
    if layout == "hf":
        write_hf(args, state, Path(out))
        return out
    qtype = layout.split("-", 1)[1]
    path = Path(out) / f"model.{qtype}.gguf"
    write_gguf(args, quantize_state(state, qtype), path)
    return str(path)


def load(ckpt: str, dtype: str = "bf16", mp_size: int = 1, baseline: bool = False) -> None:
    """Load CKPT on the CPU (this rank's shard); ``baseline``: everything but reading the weights."""
    import gguf  # noqa: F401  (both readers' imports count in the baseline)
    import safetensors.torch  # noqa: F401

    from llama.checkpoint import load_model

    rt = setup_runtime(model_parallel_size=mp_size, device="cpu", dtype=dtype, quiet_workers=False)
    if baseline:
        return
    model = load_model(ckpt, rt.device, rt.dtype, rt.mp_rank, rt.mp_size)
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}  # a tied head counts once
    print(f"rank {rt.rank}: shard {sum(t.numel() * t.element_size() for t in tensors.values()) / MiB:.0f} MiB")


def _peak_rss(cmd: List[str], nproc: int) -> List[float]:
    """Per process "Maximum resident set size" (MiB) from /usr/bin/time -v, one report file per rank."""
    with tempfile.TemporaryDirectory() as reports:
        timed = " ".join(shlex.quote(a) for a in [sys.executable, __file__, *cmd])
        launch = ["sh", "-c", f'/usr/bin/time -v -o {reports}/rank"${{RANK:-0}}" {timed}']
        if nproc > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                      "--master_port", "29544", "--no-python", *launch]
        res = subprocess.run(launch, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        text = "".join(f.read_text() for f in sorted(Path(reports).iterdir()))
    peaks = [int(k) / 1024 for k in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)]
    assert len(peaks) == nproc, text[-2000:]
    return peaks


def run(params: str, layouts: List[str] = ("hf", "gguf-F16"), mp_sizes: List[int] = (1, 2), dtype: str = "bf16",
        work_dir: Optional[str] = None) -> None:
    """Write each layout, load it at each model-parallel size, print a Markdown table (MiB)."""
    args = ModelArgs.from_params(json.loads(Path(params).read_text()))
    with torch.device("meta"):
        n_params = sum(t.numel() for t in Transformer(args).state_dict().values())
    model_mib = n_params * resolve_dtype(dtype, torch.device("cpu")).itemsize / MiB
    print(f"{n_params / 1e6:.0f}M parameters: {model_mib:.0f} MiB in {dtype}; peak RSS per rank, MiB\n")
    print("| layout | file | mp | shard in " + dtype + " | baseline | peak | peak - baseline |")
    print("|:---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for layout in layouts:
            ckpt = write(params, str(Path(tmp) / layout), layout)
            size = sum(f.stat().st_size for f in (Path(tmp) / layout).rglob("*") if f.is_file()) / MiB
            for mp in mp_sizes:
                base = max(_peak_rss(["load", ckpt, "--dtype", dtype, "--mp_size", str(mp), "--baseline"], mp))
                peak = max(_peak_rss(["load", ckpt, "--dtype", dtype, "--mp_size", str(mp)], mp))
                print(f"| {layout} | {size:.0f} | {mp} | {model_mib / mp:.0f} | {base:.0f} | {peak:.0f} | {peak - base:.0f} |",
                      flush=True)
            shutil.rmtree(Path(tmp) / layout)  # one checkpoint on disk at a time


if __name__ == "__main__":
    fire.Fire({"run": run, "write": write, "load": load})
