"""The preprocessing commands: flags -> input records written to a file (``run_preprocess.py`` and
the two ag_news scripts).  ``--demos knn`` embeds with the scoring model, loaded here
(:func:`classification.backend.loader.load_lm`) only when a text is not in the embedding cache."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from classification.backend.loader import load_lm, precision_used
from classification.errors import ClassificationError
from classification.fileio import check_not_inputs, check_output_path, write_json_atomic
from classification.inputs import retrieval
from classification.inputs.datasets import check_name, dataset_name, load_dataset
from classification.inputs.presets import get_preset
from classification.methods import TEMPLATE_METHODS
from classification.paths import (
    DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, anchors_path, default_inputs_path, embeddings_path,
)
from classification.templates import parse_template, unescape_cli


def preprocess_dataset(
    preset: Optional[str] = None,
    method: str = "direct",
    data_path: Optional[str] = None,
    template: Optional[str] = None,
    k: int = 1,
    seed: int = 42,
    sample: bool = True,
    n_sample: int = 16,
    sample_seed: Optional[int] = None,
    demos: str = "random",
    demo_pool: Optional[int] = None,
    n_anchor: int = 0,
    embedder: Optional[str] = None,
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    demo_sampling: str = "default",
    **source: Any,
) -> List[Dict[str, Any]]:
    """``run_preprocess.py``: resolve the dataset (``source``: the flags of
    :func:`~classification.inputs.datasets.load_dataset`), build ``method`` records and write them
    to ``data_path``.  ``n_sample`` 0 means the whole test split.
    ``demos``, ``demo_pool``, ``n_anchor``, ``embedder``: see :mod:`classification.inputs.retrieval`;
    ``demo_sampling`` "original": the original project's demonstrations for ``seed``
    (:func:`classification.inputs.sampling.original_demonstrations`, needs ``datasets``)."""
    retrieval.check_demos(demos, demo_pool, embedder, n_anchor, demo_sampling)
    if method not in TEMPLATE_METHODS:
        raise ClassificationError(f"--method {method!r} is not one of {', '.join(TEMPLATE_METHODS)}")
    if preset is not None:
        get_preset(preset)
    if template is not None:
        template = unescape_cli(template)
        parse_template(template, method)
    if n_sample == 0:
        sample = False
    given = source.get("name")
    name = check_name(given) if given is not None else dataset_name(
        preset, source.get("hub"), source.get("train"), source.get("data_dir"))
    path = data_path or default_inputs_path(method, name)
    check_output_path(path, "--data_path")
    dataset = load_dataset(preset=preset, **source)
    outputs = [("--data_path", path)] + ([("the anchors of --data_path", anchors_path(path))] if n_anchor else [])
    check_not_inputs(outputs, [("the dataset file", f) for f in dataset.files])  # never over the user's data
    load = lambda: load_lm(ckpt_dir, tokenizer_path)  # noqa: E731 - the embedder of --demos knn
    if demos == "knn":
        dtype, device = precision_used(None, None, None, None)  # what load_lm will use
        embed, tag = retrieval.embedder_for(embedder, ckpt_dir, tokenizer_path, load, f"{dtype} {device.split(':')[0]}")
    else:
        embed, tag = None, ""
    records, anchors = retrieval.records_and_anchors(
        dataset, method, template, k, seed, sample, n_sample, sample_seed, demos, demo_pool, n_anchor, embed,
        embeddings_path(path, tag), demo_sampling)
    write_json_atomic(path, records, indent=2)
    if anchors:
        write_json_atomic(anchors_path(path), anchors, indent=2)
        print(f"Wrote {len(anchors)} anchor records ({n_anchor} per class) to {anchors_path(path)}")
    print(f"Wrote {len(records)} {method} records of {dataset.name} ({k} demonstration(s) per class) to {path}")
    return records


def preprocess(
    method: str,
    data_path: str,
    sample: bool = True,
    k: int = 1,
    seed: int = 42,
    data_dir: Optional[str] = None,
    n_sample: int = 16,
    **demos: Any,
) -> List[Dict[str, Any]]:
    """Build ag_news input records for ``method`` and write them to ``data_path`` (JSON list).

    The ``ag_news`` preset of :func:`preprocess_dataset` (``demos``: its
    demonstration flags, e.g. ``demos="bm25"``).
    """
    return preprocess_dataset(
        preset="ag_news", method=method, data_path=data_path, k=k, seed=seed, sample=sample, n_sample=n_sample,
        data_dir=data_dir, **demos,
    )
