r"""Any text-classification dataset: presets, local CSV/JSON/JSONL files or the Hugging Face hub.

A dataset is read into (train, test) lists of :class:`~classification.data.Example` (text,
0-based label, index), then turned into input records exactly as for ag_news: ``k`` seeded
demonstrations per class from train, a stratified seeded test sample, one template per method
(:func:`classification.templates.parse_template`).

Presets carry the standard templates and label words of the in-context-learning literature and
know both the layout of the offline copies (``../shared/data/<name>``) and a hub id:

- ag_news: ``Article: {text}\nCategory: {label_word}`` (sh0416's); World, Sports, Business,
  Science and technology.
- sst2: ``Review: {text}\nSentiment: {label_word}`` (Zhao et al. 2021); Negative, Positive.
- sst5: the sst2 template; terrible, bad, okay, good, great (Gao et al. 2021).
- trec: an instruction + ``Question: {text}\nAnswer Type: {label_word}``; Abbreviation, Entity,
  Description, Person, Location, Number (Zhao et al.).
- mr, cr: the sst2 template; terrible, great (Gao et al.).
- subj: ``Input: {text}\nType: {label_word}``; subjective, objective (Gao et al.).
- dbpedia: an instruction + ``Article: {text}\nAnswer: {label_word}``; Company, School, ...,
  Book (Zhao et al.).

Channel templates swap the two lines (``Category: {label_word}\nArticle: {text}``).

Datasets without a test split (mr, cr, subj: ``all.csv``; dbpedia: ``train.csv`` only) hold out
``test_size`` rows chosen with ``random.Random(split_seed)``; the rest is the train pool.  The
split seed is separate from the demonstration seed, so every seed sees the same test set.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from classification.cli import as_list
from classification.data import Example, read_ag_news_csv, sample_test, select_demonstrations
from classification.errors import ClassificationError
from classification.fileio import check_output_path, write_json_atomic
from classification.templates import AG_NEWS_LABEL_WORDS, build_prompt_from_template, parse_template, unescape_cli

METHODS = ("direct", "channel")
FILE_FORMATS = ("csv", "json", "jsonl", "ag_news_csv")
DEFAULT_TEMPLATES: Dict[str, str] = {
    "direct": "Input: {text}\nLabel: {label_word}",
    "channel": "Label: {label_word}\nInput: {text}",
}


@dataclass(frozen=True)
class Source:
    """Where a dataset's rows come from: local files (``hub`` None) or a Hugging Face dataset.

    ``train``/``test`` are file paths (relative to ``--data_dir`` for presets) or split names;
    ``test`` None holds out ``test_size`` rows of train with ``split_seed``.
    """

    train: str
    test: Optional[str] = None
    text_columns: Tuple[str, ...] = ("text",)
    label_column: str = "label"
    hub: Optional[str] = None
    config: Optional[str] = None
    format: Optional[str] = None  # None: from the file extension (.csv, .json, .jsonl)
    test_size: Optional[int] = None
    split_seed: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    label_words: Tuple[str, ...]
    label_names: Tuple[str, ...]  # class names as in labels.txt (string labels may use them)
    templates: Dict[str, str]
    local: Source
    hub: Source
    instruction: str = ""
    reference: str = ""


def _templates(question: str, answer: str) -> Dict[str, str]:
    return {
        "direct": f"{question}: {{text}}\n{answer}: {{label_word}}",
        "channel": f"{answer}: {{label_word}}\n{question}: {{text}}",
    }


_LOCAL = Source(train="train.csv", test="test.csv")
_ALL = Source(train="all.csv", test=None, test_size=2000)
_SENTIMENT = ("negative", "positive")
_TREC_WORDS = ("Abbreviation", "Entity", "Description", "Person", "Location", "Number")
_DBPEDIA_WORDS = ("Company", "School", "Artist", "Athlete", "Politician", "Transportation", "Building",
                  "Nature", "Village", "Animal", "Plant", "Album", "Film", "Book")
_DBPEDIA_NAMES = ("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                  "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork")

PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("ag_news", AG_NEWS_LABEL_WORDS, ("World", "Sports", "Business", "Sci/Tech"),
               _templates("Article", "Category"), replace(_LOCAL, format="ag_news_csv"),
               Source(hub="ag_news", train="train", test="test"), reference="sh0416/llama-classification"),
        Preset("sst2", ("Negative", "Positive"), _SENTIMENT, _templates("Review", "Sentiment"), _LOCAL,
               Source(hub="SetFit/sst2", train="train", test="test", label_column="label_text"),
               reference="Zhao et al. 2021"),
        Preset("sst5", ("terrible", "bad", "okay", "good", "great"),
               ("very negative", "negative", "neutral", "positive", "very positive"),
               _templates("Review", "Sentiment"), _LOCAL,
               Source(hub="SetFit/sst5", train="train", test="test", label_column="label_text"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("trec", _TREC_WORDS, ("abbreviation", "entity", "description", "human", "location", "number"),
               _templates("Question", "Answer Type"), _LOCAL,
               Source(hub="CogComp/trec", train="train", test="test", label_column="coarse_label"),
               instruction="Classify the questions based on whether their answer type is a Number, Location, "
               "Person, Description, Entity, or Abbreviation.\n\n", reference="Zhao et al. 2021"),
        Preset("mr", ("terrible", "great"), _SENTIMENT, _templates("Review", "Sentiment"), _ALL,
               Source(hub="rotten_tomatoes", train="train", test="test"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("cr", ("terrible", "great"), _SENTIMENT, _templates("Review", "Sentiment"), _ALL,
               Source(hub="SetFit/SentEval-CR", train="train", test="test", label_column="label_text"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("subj", ("subjective", "objective"), ("subjective", "objective"), _templates("Input", "Type"), _ALL,
               Source(hub="SetFit/subj", train="train", test="test", label_column="label_text"),
               reference="words: Gao et al. 2021"),
        Preset("dbpedia", _DBPEDIA_WORDS, _DBPEDIA_NAMES, _templates("Article", "Answer"),
               Source(train="train.csv", test=None, test_size=1000),
               Source(hub="dbpedia_14", train="train", test="test", text_columns=("content",)),
               instruction="Classify the documents based on whether they are about a "
               + ", ".join(_DBPEDIA_WORDS[:-1]) + f", or {_DBPEDIA_WORDS[-1]}.\n\n",
               reference="Zhao et al. 2021"),
    )
}


@dataclass
class Dataset:
    """A resolved dataset: examples, label words, templates (per method) and an instruction."""

    name: str
    train: List[Example]
    test: List[Example]
    label_words: List[str]
    templates: Dict[str, str] = field(default_factory=dict)
    instruction: str = ""


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ClassificationError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)} or give your own files")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Reading rows


def _as_tuple(value: Union[None, str, Sequence[str]]) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    value = as_list(value)
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _file_format(path: Path, fmt: Optional[str]) -> str:
    if fmt is not None:
        if fmt not in FILE_FORMATS:
            raise ClassificationError(f"file format {fmt!r} is not one of {', '.join(FILE_FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json", "jsonl"):
        raise ClassificationError(f"{path}: cannot tell the format from the extension; use .csv, .json or .jsonl")
    return suffix


def read_rows(path: Path, fmt: Optional[str] = None) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(where, row) pairs of a CSV with a header, a JSON list of objects or a JSONL file."""
    kind = _file_format(path, fmt)
    if not path.is_file():
        raise ClassificationError(f"{path}: file not found")
    try:
        if kind == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if None in row:
                        raise ClassificationError(f"{path}:{reader.line_num}: more fields than the header has")
                    yield f"{path}:{reader.line_num}", row
            return
        with open(path, encoding="utf-8") as f:
            if kind == "json":
                data = json.load(f)
                if not isinstance(data, list):
                    raise ClassificationError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
                items = [(f"{path}: item {i}", row) for i, row in enumerate(data)]
            else:
                items = [(f"{path}:{i + 1}", json.loads(line)) for i, line in enumerate(f) if line.strip()]
    except json.JSONDecodeError as e:
        raise ClassificationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise ClassificationError(f"{path}: not UTF-8 text") from None
    for where, row in items:
        if not isinstance(row, dict):
            raise ClassificationError(f"{where} is not a JSON object")
        yield where, row


_INT_RE = re.compile(r"[+-]?\d+")


def label_index(value: Any, label_words: Sequence[str], label_names: Sequence[str], where: str) -> int:
    """A row's 0-based label: an integer (or integer string), a label word or a class name."""
    n = len(label_words)
    index: Optional[int] = None
    if isinstance(value, bool):
        index = None
    elif isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            index = int(text)
        else:
            for names in (label_words, label_names):
                lowered = [w.lower() for w in names]
                if text.lower() in lowered:
                    return lowered.index(text.lower())
            listed = list(label_names) != list(label_words) and bool(label_names)
            names = f" or class names {list(label_names)}" if listed else ""
            raise ClassificationError(
                f"{where}: label {value!r} is outside the label words {list(label_words)}{names}; "
                "use 0-based integers or those words (check --label_words and --label_column)"
            )
    if index is None or not 0 <= index < n:
        raise ClassificationError(
            f"{where}: label {value!r} is outside the {n} label words {list(label_words)} (0-based integers "
            f"0..{n - 1}); check --label_words and --label_column"
        )
    return index


def rows_to_examples(
    rows: Iterator[Tuple[str, Dict[str, Any]]],
    text_columns: Sequence[str],
    label_column: str,
    label_words: Sequence[str],
    label_names: Sequence[str],
    what: str,
) -> List[Example]:
    """Examples (text = the text columns joined with a space) from (where, row) pairs."""
    examples: List[Example] = []
    for where, row in rows:
        missing = [c for c in (*text_columns, label_column) if c not in row]
        if missing:
            raise ClassificationError(
                f"{where}: no column {missing[0]!r} (columns: {', '.join(map(str, row))}); "
                "pass --text_column / --label_column"
            )
        text = " ".join("" if row[c] is None else str(row[c]) for c in text_columns)
        label = label_index(row[label_column], label_words, label_names, where)
        examples.append(Example(text=text, label=label, index=len(examples)))
    if not examples:
        raise ClassificationError(f"{what} has no rows")
    return examples


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


def read_labels_txt(folder: Path) -> Optional[List[str]]:
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_local(
    source: Source, root: Optional[Path], label_words: Sequence[str], label_names: Sequence[str]
) -> Tuple[List[Example], List[Example]]:
    """(train, test) from local files; ``root`` is the preset's --data_dir (None: paths as given)."""
    paths = [source.train] + ([source.test] if source.test else [])
    full = [(root / p) if root is not None else Path(p) for p in paths]
    if root is not None:
        missing = [p for p, f in zip(paths, full) if not f.is_file()]
        if missing:
            raise ClassificationError(
                f"--data_dir {root} has no {' or '.join(missing)}; pass the folder of the preset's files "
                f"(as in ../shared/data/<preset>: {', '.join(paths)})"
            )
    for flag, path in zip(("--train", "--test"), full):
        if not path.is_file():
            raise ClassificationError(f"{flag} {path}: file not found")
    splits: List[List[Example]] = []
    for path in full:
        if source.format == "ag_news_csv":
            splits.append(read_ag_news_csv(path, n_classes=len(label_words)))
        else:
            rows = read_rows(path, source.format)
            columns = (source.text_columns, source.label_column)
            splits.append(rows_to_examples(rows, *columns, label_words, label_names, str(path)))
    if len(splits) == 1:
        return holdout_split(splits[0], source.test_size, source.split_seed, str(full[0]))
    return splits[0], splits[1]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_hub(
    source: Source, label_words: Optional[Sequence[str]], label_names: Sequence[str]
) -> Tuple[List[Example], List[Example], List[str]]:
    """(train, test, label words) from ``datasets.load_dataset(source.hub, source.config)``.

    Without label words, the label column's ClassLabel names are used.
    """
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise ClassificationError(
            f"reading {source.hub} from the Hugging Face hub needs the `datasets` package: `pip install datasets`, "
            "or pass local files (--data_dir for a preset, --train_file/--test_file otherwise)"
        ) from None
    try:
        loaded = datasets.load_dataset(source.hub, source.config)
    except Exception as e:  # noqa: BLE001 - network, unknown name, bad config: one line
        raise ClassificationError(f"cannot load {source.hub!r} from the Hugging Face hub: {_one_line(e)}") from None
    names = list(loaded.keys())
    wanted = [source.train] + ([source.test] if source.test else [])
    for split in wanted:
        if split not in loaded:
            raise ClassificationError(f"hub dataset {source.hub} has no split {split!r} (splits: {', '.join(names)})")
    if label_words is None:
        feature = getattr(loaded[source.train], "features", {}).get(source.label_column)
        label_words = list(getattr(feature, "names", []) or [])
        if not label_words:
            raise ClassificationError(f"hub dataset {source.hub}: give --label_words (the label column has no names)")
    splits = []
    for split in wanted:
        rows = ((f"{source.hub}[{split}] row {i}", dict(row)) for i, row in enumerate(loaded[split]))
        splits.append(rows_to_examples(rows, source.text_columns, source.label_column, label_words, label_names,
                                       f"{source.hub}[{split}]"))
    if len(splits) == 1:
        train, test = holdout_split(splits[0], source.test_size, source.split_seed, f"{source.hub}[{source.train}]")
    else:
        train, test = splits
    return train, test, list(label_words)


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


def dataset_name(preset: Optional[str], hub: Optional[str], train: Optional[str], data_dir: Optional[str]) -> str:
    """The dataset's name in records and reports: the preset, hub name, or the data folder's name."""
    if preset:
        return preset
    if hub:
        return split_hub(hub)[0].rstrip("/").split("/")[-1]
    folder = Path(data_dir) if data_dir else Path(train).resolve().parent if train else None
    if folder is not None and folder.resolve().name:
        return folder.resolve().name
    return Path(train).stem if train else "custom"


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
    return Dataset(
        name=name or dataset_name(preset, hub, train, data_dir),
        train=train_ex,
        test=test_ex,
        label_words=list(words),
        templates=dict(p.templates) if p else dict(DEFAULT_TEMPLATES),
        instruction=p.instruction if p else "",
    )


def make_records(
    dataset: Dataset,
    method: str,
    template: Optional[str] = None,
    k: int = 1,
    seed: int = 42,
    sample: bool = True,
    n_sample: int = 16,
    sample_seed: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Input records for ``method``: demonstrations seeded by ``seed``, test sample by ``sample_seed``.

    A ``template`` given here replaces the dataset's (and drops the preset's instruction).
    """
    if method not in METHODS:
        raise ClassificationError(f"unknown method {method!r} for inputs; use one of {', '.join(METHODS)}")
    for flag, value in (("--k", k), ("--seed", seed), ("--n_sample", n_sample)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ClassificationError(f"{flag} must be an integer, got {value!r}")
    chosen_template = template if template is not None else dataset.templates[method]
    instruction = dataset.instruction if template is None else ""
    parse_template(chosen_template, method)  # one-line error before any work
    words = dataset.label_words
    demos = select_demonstrations(dataset.train, k, seed, len(words))
    prompt, completion = build_prompt_from_template(
        chosen_template, method, [(ex.text, words[ex.label]) for ex in demos], instruction
    )
    test_seed = seed if sample_seed is None else sample_seed
    chosen = sample_test(dataset.test, n_sample, test_seed, len(words)) if sample else list(dataset.test)
    meta = {"dataset": dataset.name, "method": method, "k": k, "seed": seed,
            "sample_seed": test_seed if sample else None}
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
    ckpt_dir: str = "checkpoints/smollm2/135M",
    tokenizer_path: str = "checkpoints/smollm2/tokenizer.json",
    **source: Any,
) -> List[Dict[str, Any]]:
    """``run_preprocess.py``: resolve the dataset (``source``: :func:`load_dataset`'s flags), build
    ``method`` records and write them to ``data_path``.  ``n_sample`` 0 means the whole test split.
    ``demos``, ``demo_pool``, ``n_anchor``, ``embedder``: see :mod:`classification.retrieval`."""
    from classification import retrieval

    retrieval.check_demos(demos, demo_pool, embedder, n_anchor)
    if method not in METHODS:
        raise ClassificationError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if preset is not None:
        get_preset(preset)
    if template is not None:
        template = unescape_cli(template)
        parse_template(template, method)
    if n_sample == 0:
        sample = False
    name = source.get("name") or dataset_name(preset, source.get("hub"), source.get("train"), source.get("data_dir"))
    path = data_path or f"samples/inputs_{method}_{name}.json"
    check_output_path(path, "--data_path")
    dataset = load_dataset(preset=preset, **source)
    embed, tag = retrieval.embedder_for(embedder, ckpt_dir, tokenizer_path) if demos == "knn" else (None, "")
    records, anchors = retrieval.build_records(
        dataset, method, template, k, seed, sample, n_sample, sample_seed, demos, demo_pool, n_anchor, embed,
        Path(path).parent / f"embeddings.{tag}.npz")
    write_json_atomic(path, records, indent=2)
    if anchors:
        write_json_atomic(retrieval.anchors_path(path), anchors, indent=2)
        print(f"Wrote {len(anchors)} anchor records ({n_anchor} per class) to {retrieval.anchors_path(path)}")
    print(f"Wrote {len(records)} {method} records of {dataset.name} ({k} demonstration(s) per class) to {path}")
    return records
