"""Any text-classification dataset, from flags to input records.

:func:`load_dataset` resolves the dataset flags of ``run_preprocess.py`` (a preset of
:mod:`classification.inputs.presets`, local files or a hub id; rows read by
:mod:`classification.inputs.sources`) into (train, test) lists of examples;
:func:`random_demo_records` turns them into input records exactly as for ag_news: ``k`` seeded
demonstrations per class from train, a stratified seeded test sample
(:mod:`classification.inputs.sampling`), one template per method
(:func:`classification.templates.parse_template`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from classification.cli import as_list
from classification.errors import ClassificationError, check_int
from classification.fileio import file_sha256
from classification.methods import TEMPLATE_METHODS
from classification.inputs.presets import DEFAULT_TEMPLATES, PRESETS, Source, get_preset
from classification.inputs.sampling import Example, draw_demonstrations, sample_test
from classification.inputs.sources import load_hub, load_local, read_labels_txt
from classification.templates import build_prompt_from_template, parse_template


@dataclass
class Dataset:
    """A resolved dataset: examples, label words, templates (per method) and an instruction."""

    name: str
    train: List[Example]
    test: List[Example]
    label_words: List[str]
    templates: Dict[str, str] = field(default_factory=dict)
    instruction: str = ""
    files: List[str] = field(default_factory=list)  # the local files it was read from
    sources_sha256: Dict[str, str] = field(default_factory=dict)  # their content, by file name (records' meta)


def _as_tuple(value: Union[None, str, Sequence[str]]) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    value = as_list(value)
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


# ---------------------------------------------------------------------------------------------
# From flags to a dataset


def _check_label_words(words: Any) -> List[str]:
    words = as_list(words)
    if isinstance(words, str):
        words = [words]
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise ClassificationError(f"--label_words must be a non-empty list of non-empty strings, got {words!r}")
    if len(set(words)) != len(words):
        raise ClassificationError(f"--label_words has duplicates: {list(words)}")
    return [str(w) for w in words]


def split_hub(hub: str) -> Tuple[str, Optional[str]]:
    """``"name:config"`` -> (name, config); ``"name"`` -> (name, None)."""
    name, _, config = hub.partition(":")
    if not name:
        raise ClassificationError(f"--hub {hub!r}: give a dataset name, optionally with :config")
    return name, config or None


_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")  # separators, NUL and other control characters


def check_name(name: Any) -> str:
    """A dataset name given by the user (a spec's ``"name"``), which becomes a folder and file name
    part (``outputs/<name>/``, ``inputs_<method>_<name>.json``): one line unless it is a plain name."""
    if not isinstance(name, str) or not name or name.startswith(".") or _UNSAFE_NAME.search(name):
        raise ClassificationError(
            f"dataset name {name!r} cannot name a folder: it must be a non-empty string without '/', '\\', "
            "control characters or a leading dot, e.g. \"my_topics\""
        )
    return name


def dataset_name(preset: Optional[str], hub: Optional[str], train: Optional[str], data_dir: Optional[str]) -> str:
    """The dataset's name in records and reports: the preset, hub name, or the data folder's name
    (made a plain file name part: separators and control characters become "-", no leading dot)."""
    if preset:
        name = preset
    elif hub:
        name = split_hub(hub)[0].rstrip("/").split("/")[-1]
    else:
        folder = Path(data_dir) if data_dir else Path(train).resolve().parent if train else None
        if folder is not None and folder.resolve().name:
            name = folder.resolve().name
        else:
            name = Path(train).stem if train else "custom"
    return _UNSAFE_NAME.sub("-", name).lstrip(".") or "custom"


def load_dataset(
    preset: Optional[str] = None,
    data_dir: Optional[str] = None,
    train: Optional[str] = None,
    test: Optional[str] = None,
    hub: Optional[str] = None,
    text_column: Union[None, str, Sequence[str]] = None,
    label_column: Optional[str] = None,
    label_words: Optional[Sequence[str]] = None,
    test_size: Optional[int] = None,
    split_seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Dataset:
    """Resolve the dataset flags of ``run_preprocess.py`` into a :class:`Dataset`.

    Local rows when ``data_dir`` or ``train`` is given: ``train``/``test`` are files (relative to
    ``data_dir``; a preset knows its own), a missing test file means a seeded hold-out of
    ``test_size`` rows.  Otherwise the hub: ``hub`` ("name" or "name:config", default the
    preset's id) with ``train``/``test`` as split names.  Flags override the preset's columns,
    splits and label words; label words default to the preset's, then ``labels.txt``.
    """
    p = get_preset(preset) if preset is not None else None
    words = _check_label_words(label_words) if label_words is not None else (list(p.label_words) if p else None)
    names: Sequence[str] = p.label_names if p else ()
    root: Optional[Path] = Path(data_dir) if data_dir is not None else None
    if hub is None and (data_dir is not None or train is not None):
        base = p.local if p is not None else Source(train="train.csv", test="test.csv")
        if root is None:  # files given one by one: no test file unless --test
            base = replace(base, test=None)
        chosen_train = train if train is not None else base.train
        fmt = base.format if Path(chosen_train).suffix.lower() == ".csv" else None
        source = replace(base, train=chosen_train, test=test if test is not None else base.test, format=fmt)
    elif hub is not None or p is not None:
        base = p.hub if p is not None else Source(train="train", test="test")
        hub_name, config = split_hub(hub) if hub is not None else (base.hub, base.config)
        source = replace(base, hub=hub_name, config=config, train=train or base.train, test=test or base.test)
    elif test is not None:
        raise ClassificationError("--test needs --train or --data_dir (the demonstrations come from the train split)")
    else:
        raise ClassificationError("give --preset (one of " + ", ".join(PRESETS) + "), --data_dir, --train or --hub")
    overrides: Dict[str, Any] = {}
    if text_column is not None:
        overrides["text_columns"] = _as_tuple(text_column)
    if label_column is not None:
        overrides["label_column"] = str(label_column)
    if test_size is not None:
        overrides["test_size"] = test_size
    if split_seed is not None:
        overrides["split_seed"] = split_seed
    source = replace(source, **overrides)

    files: List[str] = []
    if source.hub is not None:
        train_ex, test_ex, words = load_hub(source, words, names)
    else:
        folder = root if root is not None else Path(source.train).parent
        listed = read_labels_txt(folder)
        if words is None:
            if listed is None:
                raise ClassificationError(
                    f"give --label_words (one word per label, in label order); {folder} has no labels.txt"
                )
            words = listed
        elif p is not None and root is not None and listed is not None and len(listed) != len(words):
            raise ClassificationError(
                f"{folder}/labels.txt lists {len(listed)} classes but there are {len(words)} label words {words}"
            )
        if not names and listed is not None and len(listed) == len(words):
            names = listed
        train_ex, test_ex = load_local(source, root, words, names)
        files += [str(root / f if root is not None else f) for f in (source.train, source.test) if f]
        files += [str(folder / "labels.txt")] if listed is not None else []
    return Dataset(
        name=check_name(name) if name is not None else dataset_name(preset, hub, train, data_dir),
        train=train_ex,
        test=test_ex,
        label_words=list(words),
        templates=dict(p.templates) if p else dict(DEFAULT_TEMPLATES),
        instruction=p.instruction if p else "",
        files=files,
        sources_sha256={Path(f).name: file_sha256(f) for f in files},
    )


def random_demo_records(
    dataset: Dataset,
    method: str,
    template: Optional[str] = None,
    k: int = 1,
    seed: int = 42,
    sample: bool = True,
    n_sample: int = 16,
    sample_seed: Optional[int] = None,
    demo_sampling: str = "default",
) -> List[Dict[str, Any]]:
    """Input records for ``method``: demonstrations seeded by ``seed``, test sample by ``sample_seed``.

    A ``template`` given here replaces the dataset's (and drops the preset's instruction).
    ``demo_sampling`` "original" draws the demonstrations as the original project did
    (:func:`classification.inputs.sampling.original_demonstrations`; the records' meta says so).
    """
    if method not in TEMPLATE_METHODS:
        raise ClassificationError(f"unknown method {method!r} for inputs; use one of {', '.join(TEMPLATE_METHODS)}")
    for flag, value in (("--k", k), ("--seed", seed), ("--n_sample", n_sample)):
        check_int(flag, value)
    chosen_template = template if template is not None else dataset.templates[method]
    instruction = dataset.instruction if template is None else ""
    parse_template(chosen_template, method)  # one-line error before any work
    words = dataset.label_words
    demos = draw_demonstrations(dataset.train, k, seed, len(words), demo_sampling)
    prompt, completion = build_prompt_from_template(
        chosen_template, method, [(ex.text, words[ex.label]) for ex in demos], instruction
    )
    test_seed = seed if sample_seed is None else sample_seed
    chosen = sample_test(dataset.test, n_sample, test_seed, len(words)) if sample else list(dataset.test)
    meta = {"dataset": dataset.name, "method": method, "k": k, "seed": seed,
            "sample_seed": test_seed if sample else None, "template": chosen_template}
    if demo_sampling != "default":
        meta["demo_sampling"] = demo_sampling
    if dataset.sources_sha256:  # what the records were made from
        meta["sources_sha256"] = dataset.sources_sha256
    return [
        {
            "prompt": prompt,
            "completion": completion,
            "text": ex.text,
            "label_words": list(words),
            "ground_truth": words[ex.label],
            "index": ex.index,
            "meta": meta,
        }
        for ex in chosen
    ]

