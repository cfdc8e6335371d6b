"""ag_news loading, seeded stratified demonstrations and test samples, and input records.

Data come from a local directory in the original ``ag_news_csv`` layout (``train.csv`` and
``test.csv``, no header, columns ``class,title,description``, class 1..4) or, without a
directory, from the Hugging Face hub (``datasets.load_dataset("ag_news")``).  Either way an
example's text is ``title + " " + description`` and its label ``class - 1``.

An input record (the JSON format of the original project, plus ``index``)::

    {"prompt": "<demonstrations>Article: {text}\\nCategory:", "completion": "{label_word}",
     "text": "...", "label_words": ["World", ...], "ground_truth": "Sports", "index": 17}
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from classification.errors import ClassificationError
from classification.templates import AG_NEWS_LABEL_WORDS, has_placeholder

N_CLASSES = len(AG_NEWS_LABEL_WORDS)


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 0-based
    index: int  # position in its split


def read_ag_news_csv(path: Path, n_classes: int = N_CLASSES) -> List[Example]:
    """Read one ``ag_news_csv`` file (``"class","title","description"`` rows, no header)."""
    examples: List[Example] = []
    with open(path, newline="", encoding="utf-8") as f:
        # The same dialect as the Hugging Face ag_news loader.
        reader = csv.reader(f, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 3:
                raise ClassificationError(
                    f"{where}: expected 3 columns class,title,description, got {len(row)}; "
                    "is this the ag_news_csv layout?"
                )
            try:
                cls = int(row[0])
            except ValueError:
                cls = 0
            if not 1 <= cls <= n_classes:
                raise ClassificationError(f"{where}: class {row[0]!r} is not an integer in 1..{n_classes}")
            examples.append(Example(text=row[1] + " " + row[2], label=cls - 1, index=len(examples)))
    if not examples:
        raise ClassificationError(f"{path} has no rows")
    return examples


def load_ag_news(data_dir: Optional[str] = None) -> Tuple[List[Example], List[Example]]:
    """(train, test) examples from ``data_dir`` or, when it is None, from the Hugging Face hub."""
    if data_dir is not None:
        root = Path(data_dir)
        missing = [name for name in ("train.csv", "test.csv") if not (root / name).is_file()]
        if missing:
            raise ClassificationError(
                f"--data_dir {data_dir} has no {' or '.join(missing)}; pass a directory in the "
                "ag_news_csv layout (train.csv and test.csv with class,title,description rows)"
            )
        return read_ag_news_csv(root / "train.csv"), read_ag_news_csv(root / "test.csv")
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise ClassificationError(
            "reading ag_news from the Hugging Face hub needs the `datasets` package: pass "
            "--data_dir with an ag_news_csv directory (train.csv, test.csv), or `pip install datasets`"
        ) from None
    dataset = datasets.load_dataset("ag_news")
    splits = []
    for split in ("train", "test"):
        splits.append(
            [Example(text=row["text"], label=int(row["label"]), index=i) for i, row in enumerate(dataset[split])]
        )
    return splits[0], splits[1]


def _by_class(examples: Sequence[Example], n_classes: int) -> List[List[Example]]:
    groups: List[List[Example]] = [[] for _ in range(n_classes)]
    for ex in examples:
        groups[ex.label].append(ex)
    return groups


def select_demonstrations(
    train: Sequence[Example], k: int, seed: int, n_classes: int = N_CLASSES, split: str = "train"
) -> List[Example]:
    """``k`` examples per class from ``train``, chosen and then ordered with ``random.Random(seed)``.

    Examples whose text contains a literal ``{text}`` or ``{label_word}`` are never chosen: the
    prompt keeps those placeholders for the test example, so such a text would be filled later.
    """
    if k < 0:
        raise ClassificationError(f"--k must be 0 or more, got {k}")
    groups = [[ex for ex in group if not has_placeholder(ex.text)] for group in _by_class(train, n_classes)]
    smallest = min(range(n_classes), key=lambda c: len(groups[c]))
    if k > len(groups[smallest]):
        raise ClassificationError(
            f"--k {k} is larger than the smallest class of the {split} split (label {smallest} has "
            f"{len(groups[smallest])} usable examples); use --k {len(groups[smallest])} or less"
        )
    rng = random.Random(seed)
    chosen = [ex for group in groups for ex in rng.sample(group, k)]
    rng.shuffle(chosen)
    return chosen


def sample_test(
    test: Sequence[Example], n_sample: int, seed: int, n_classes: int = N_CLASSES
) -> List[Example]:
    """A stratified, seeded sample of ``n_sample`` test examples, in test-split order.

    Each class gets ``n_sample // n_classes`` examples; the first ``n_sample % n_classes``
    classes get one more.  The sample depends only on ``seed`` (not on the demonstrations).
    """
    if n_sample < 1:
        raise ClassificationError(f"--n_sample must be at least 1, got {n_sample}")
    groups = _by_class(test, n_classes)
    rng = random.Random(seed)
    chosen: List[Example] = []
    for c, group in enumerate(groups):
        want = n_sample // n_classes + (1 if c < n_sample % n_classes else 0)
        if want > len(group):
            raise ClassificationError(
                f"--n_sample {n_sample} needs {want} test examples of label {c}, which has only "
                f"{len(group)}; use a smaller --n_sample"
            )
        chosen.extend(rng.sample(group, want))
    return sorted(chosen, key=lambda ex: ex.index)


def build_records(
    method: str,
    train: Sequence[Example],
    test: Sequence[Example],
    k: int = 1,
    seed: int = 42,
    sample: bool = True,
    n_sample: int = 16,
    label_words: Sequence[str] = AG_NEWS_LABEL_WORDS,
) -> List[Dict[str, Any]]:
    """ag_news input records for ``method`` from already-loaded splits (the ``ag_news`` preset)."""
    from classification.datasets import Dataset, get_preset, make_records

    preset = get_preset("ag_news")
    dataset = Dataset("ag_news", list(train), list(test), list(label_words), dict(preset.templates), preset.instruction)
    return make_records(dataset, method, k=k, seed=seed, sample=sample, n_sample=n_sample)


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

    The ``ag_news`` preset of :func:`classification.datasets.preprocess_dataset` (``demos``: its
    demonstration flags, e.g. ``demos="bm25"``).
    """
    from classification.datasets import preprocess_dataset

    return preprocess_dataset(
        preset="ag_news", method=method, data_path=data_path, k=k, seed=seed, sample=sample, n_sample=n_sample,
        data_dir=data_dir, **demos,
    )
