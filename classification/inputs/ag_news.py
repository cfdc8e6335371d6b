"""ag_news in the original's layout, and its input records (the ``ag_news`` preset).

Data come from a local directory in the original ``ag_news_csv`` layout (``train.csv`` and
``test.csv``, no header, columns ``class,title,description``, class 1..4) or, without a
directory, from the Hugging Face hub (``datasets.load_dataset("ag_news")``).  Either way an
example's text is ``title + " " + description`` and its label ``class - 1``.

An input record (the JSON format of the original project, plus ``index``)::

    {"prompt": "<demonstrations>Article: {text}\\nCategory:", "completion": "{label_word}",
     "text": "...", "label_words": ["World", ...], "ground_truth": "Sports", "index": 17}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from classification.errors import ClassificationError
from classification.inputs.datasets import Dataset, random_demo_records
from classification.inputs.presets import get_preset
from classification.inputs.sampling import Example
from classification.inputs.sources import read_ag_news_csv
from classification.templates import AG_NEWS_LABEL_WORDS


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
        import datasets  # type: ignore[import-not-found]  # optional package: imported where used
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
    preset = get_preset("ag_news")
    dataset = Dataset("ag_news", list(train), list(test), list(label_words), dict(preset.templates), preset.instruction)
    return random_demo_records(dataset, method, k=k, seed=seed, sample=sample, n_sample=n_sample)
