"""Every file name derived from another: the one place that knows how outputs, metrics, hidden
states, anchors, partial files, embedding caches, seed runs and reports are named.

Given ``samples/outputs_direct_x.json`` (an output) or ``samples/inputs_direct_x.json`` (inputs):

- ``outputs_direct_x.metrics.json``           :func:`metrics_path`
- ``outputs_direct_x.hidden.npy``             :func:`hidden_path` (``--save_hidden``)
- ``outputs_direct_x.json.partial.jsonl``     :func:`partial_path` (``.partial.<rank>.jsonl`` per data-parallel rank)
- ``inputs_direct_x.anchors.json``            :func:`anchors_path` (anchor records; for an output: the anchors' run)
- ``embeddings.<embedder>.npz`` beside inputs :func:`embeddings_path` (``--demos knn`` cache)
- ``outputs/<dataset>/k<k>/seed<s>/...``      :func:`seeds_dir`, :func:`seed_inputs_path`, :func:`seed_outputs_path`,
  :func:`summary_paths`
- ``<out_dir>/report.md`` and ``img/*.png``   :func:`report_path`, :func:`report_image`
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, List, Tuple

# The default model, as ``make setup`` installs it.
DEFAULT_CKPT_DIR = "checkpoints/smollm2/135M"
DEFAULT_TOKENIZER_PATH = "checkpoints/smollm2/tokenizer.json"


def metrics_path(output_path: str) -> str:
    """``samples/outputs_x.json`` -> ``samples/outputs_x.metrics.json``."""
    return str(Path(output_path).with_suffix(".metrics.json"))


def hidden_path(output_path: str) -> str:
    """``outputs_direct_x.json`` -> ``outputs_direct_x.hidden.npy``."""
    return str(Path(output_path).with_suffix(".hidden.npy"))


def anchors_path(path: str) -> str:
    """``inputs_direct_x.json`` -> ``inputs_direct_x.anchors.json`` (the anchor records); for a
    direct output, the output of the anchors' direct run."""
    return str(Path(path).with_suffix(".anchors.json"))


def partial_path(output_path: str, dp_rank: int = 0, dp_size: int = 1) -> str:
    """The JSONL file a data-parallel rank appends its finished results to."""
    return f"{output_path}.partial.jsonl" if dp_size == 1 else f"{output_path}.partial.{dp_rank}.jsonl"


def partial_files(output_path: str) -> List[str]:
    """Every partial file of ``output_path``, whatever the data-parallel size that wrote it."""
    return sorted(glob.glob(glob.escape(output_path) + ".partial*.jsonl"))


def staging_path(path: Path) -> Path:
    """Where a file is written before it replaces ``path`` (``x.npy`` -> ``x.tmp.npy``)."""
    return path.with_suffix(".tmp" + path.suffix)


def embedder_tag(path: str, content_digest: str) -> str:
    """A file-name-safe tag of an embedder: the last two parts of its path, then the digest of its
    files' content (so weights changed in place get a cache of their own)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(Path(path).resolve().parts[-2:]))
    return f"{name}-{content_digest[:12]}"


def embeddings_path(data_path: str, tag: str) -> Path:
    """The embedding cache of one embedder beside the records it served."""
    return Path(data_path).parent / f"embeddings.{tag}.npz"


def default_inputs_path(method: str, dataset: str) -> str:
    """``run_preprocess.py``'s records without ``--data_path``."""
    return f"samples/inputs_{method}_{dataset}.json"


def seeds_dir(dataset: str, k: int, demos: str = "random") -> Path:
    """``run_seeds.py``'s folder without ``--out_dir`` (retrieved demonstrations: ``k<k>-<demos>``)."""
    return Path(f"outputs/{dataset}/k{k}" + ("" if demos == "random" else f"-{demos}"))


def seed_inputs_path(root: Path, seed: int, method: str) -> Path:
    return root / f"seed{seed}" / f"inputs_{method}.json"


def seed_outputs_path(root: Path, seed: int, method: str) -> Path:
    return root / f"seed{seed}" / f"outputs_{method}.json"


def summary_paths(root: Path) -> Tuple[Path, Path]:
    """(summary.json, summary.md) of a seeds folder."""
    return root / "summary.json", root / "summary.md"


def report_path(out_dir: str) -> Path:
    return Path(out_dir) / "report.md"


def slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def report_images(out_dir: str) -> Path:
    return Path(out_dir) / "img"


def report_image(out_dir: str, kind: str, *parts: Any) -> Path:
    """``<out_dir>/img/<kind>_<parts>.png`` (kind: accuracy, reliability, confusion)."""
    return report_images(out_dir) / f"{kind}_{slug(*parts)}.png"
