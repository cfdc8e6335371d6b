"""Seeded sampling: k demonstrations per class, a stratified test sample, a held-out test split.

Demonstrations are drawn one of two ways (``--demo_sampling``): ``default``, k per class with
Python's ``random`` (:func:`select_demonstrations`), or ``original``, the original project's call
to Hugging Face ``datasets`` on the same training rows (:func:`original_demonstrations`), so that
the same ``--seed`` gives its demonstrations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from classification.errors import ClassificationError
from classification.templates import AG_NEWS_LABEL_WORDS, has_placeholder

N_CLASSES = len(AG_NEWS_LABEL_WORDS)
DEMO_SAMPLINGS = ("default", "original")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 0-based
    index: int  # position in its split


def by_class(examples: Sequence[Example], n_classes: int) -> List[List[Example]]:
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
    groups = [[ex for ex in group if not has_placeholder(ex.text)] for group in by_class(train, n_classes)]
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


def original_demonstrations(
    train: Sequence[Example], k: int, seed: int, n_classes: int = N_CLASSES, split: str = "train"
) -> List[Example]:
    """The demonstrations the original project draws, in its order: the training rows as a
    ``datasets.Dataset`` (label a ``ClassLabel``), then
    ``train_test_split(train_size=k * n_classes, seed=seed, stratify_by_column="label")["train"]``.

    With k = 1 on the full ag_news train split this is the original's call exactly.  The split
    gives each class its share of ``k * n_classes`` (k per class when the classes are about
    balanced, as in ag_news).  Nothing is downloaded; ``datasets`` is needed (optional package).
    """
    if k < 0:
        raise ClassificationError(f"--k must be 0 or more, got {k}")
    if k == 0:
        return []
    try:
        import datasets  # type: ignore[import-not-found]  # optional package: imported where used
    except ImportError:
        raise ClassificationError("--demo_sampling original needs the `datasets` package: pip install datasets") from None
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(num_classes=n_classes),
                                  "position": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict(
        {"text": [ex.text for ex in train], "label": [ex.label for ex in train], "position": list(range(len(train)))},
        features=features,
    )
    try:
        chosen = rows.train_test_split(train_size=k * n_classes, seed=seed, stratify_by_column="label")["train"]
    except ValueError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClassificationError(
            f"--demo_sampling original cannot draw {k * n_classes} demonstrations from the {len(train)} examples "
            f"of the {split} split: {reason}"
        ) from None
    demos = [train[int(pos)] for pos in chosen["position"]]
    for ex in demos:
        if has_placeholder(ex.text):
            raise ClassificationError(
                f"--demo_sampling original drew {split} example {ex.index}, whose text holds a literal {{text}} or "
                "{label_word} (it would be filled with the test input); use another --seed"
            )
    return demos


def draw_demonstrations(
    train: Sequence[Example], k: int, seed: int, n_classes: int = N_CLASSES, demo_sampling: str = "default",
    split: str = "train",
) -> List[Example]:
    """The demonstrations of ``--demo_sampling`` (one of :data:`DEMO_SAMPLINGS`)."""
    if demo_sampling == "original":
        return original_demonstrations(train, k, seed, n_classes, split)
    if demo_sampling != "default":
        raise ClassificationError(f"--demo_sampling {demo_sampling!r} is not one of {', '.join(DEMO_SAMPLINGS)}")
    return select_demonstrations(train, k, seed, n_classes, split)


def sample_test(
    test: Sequence[Example], n_sample: int, seed: int, n_classes: int = N_CLASSES
) -> List[Example]:
    """A stratified, seeded sample of ``n_sample`` test examples, in test-split order.

    Each class gets ``n_sample // n_classes`` examples; the first ``n_sample % n_classes``
    classes get one more.  The sample depends only on ``seed`` (not on the demonstrations).
    """
    if n_sample < 1:
        raise ClassificationError(f"--n_sample must be at least 1, got {n_sample}")
    return stratified(test, n_sample, random.Random(seed), n_classes, f"--n_sample {n_sample}", "test",
                      "; use a smaller --n_sample")


def stratified(examples: Sequence[Example], n: int, rng: random.Random, n_classes: int, what: str,
               split: str = "training", hint: str = "") -> List[Example]:
    """``n`` examples spread evenly over the classes (the first n % C classes get one more), drawn
    with ``rng`` class by class, in split order.  ``what`` names the flag in the error."""
    chosen: List[Example] = []
    for c, group in enumerate(by_class(examples, n_classes)):
        want = n // n_classes + (1 if c < n % n_classes else 0)
        if want > len(group):
            raise ClassificationError(
                f"{what} needs {want} {split} examples of label {c}, which has only {len(group)}{hint}")
        chosen.extend(rng.sample(group, want))
    return sorted(chosen, key=lambda ex: ex.index)


def holdout_split(
    examples: Sequence[Example], test_size: Optional[int], split_seed: int, what: str
) -> Tuple[List[Example], List[Example]]:
    """(train, test): ``test_size`` examples drawn with ``random.Random(split_seed)``, in file order."""
    if test_size is None:
        raise ClassificationError(f"{what} has no test split; pass --test_size (rows to hold out) or --test_file")
    if not isinstance(test_size, int) or isinstance(test_size, bool) or not 0 < test_size < len(examples):
        raise ClassificationError(
            f"--test_size must be an integer in 1..{len(examples) - 1} for {what}, got {test_size!r}"
        )
    positions = list(range(len(examples)))
    random.Random(split_seed).shuffle(positions)
    held = set(positions[:test_size])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    test = [ex for i, ex in enumerate(examples) if i in held]
    return train, test
