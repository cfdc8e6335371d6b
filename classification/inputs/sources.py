"""Where rows come from: local CSV/JSON/JSONL files (the standard library), the ag_news_csv
layout, parquet files and hub ids (the Hugging Face ``datasets`` package, when installed).

Local text formats are read without ``datasets``: it would add about 400 MB (pyarrow, pandas,
...) to the install and about 5 s to every preprocessing start on a 2-core machine, and the
readers here name the file line of a bad row.  Every problem is a one-line error.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from classification.errors import ClassificationError, json_cause
from classification.inputs.presets import Source
from classification.inputs.sampling import N_CLASSES, Example, holdout_split

FILE_FORMATS = ("csv", "json", "jsonl", "parquet", "ag_news_csv")

def _decoded(rows: Iterable[List[str]], path: Path) -> Iterator[List[str]]:
    """``rows`` with a file that is not UTF-8 turned into a one-line error."""
    try:
        yield from rows
    except UnicodeDecodeError as e:
        raise ClassificationError(f"{path}: not UTF-8 text (byte {e.start} of a read block: {e.reason})") from None


def read_ag_news_csv(path: Path, n_classes: int = N_CLASSES) -> List[Example]:
    """Read one ``ag_news_csv`` file (``"class","title","description"`` rows, no header)."""
    examples: List[Example] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        # The same dialect as the Hugging Face ag_news loader.
        reader = csv.reader(f, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        for row in _decoded(reader, path):
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


def _file_format(path: Path, fmt: Optional[str]) -> str:
    if fmt is not None:
        if fmt not in FILE_FORMATS:
            raise ClassificationError(f"file format {fmt!r} is not one of {', '.join(FILE_FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json", "jsonl", "parquet"):
        raise ClassificationError(
            f"{path}: cannot tell the format from the extension; use .csv, .json, .jsonl or .parquet"
        )
    return suffix


def read_parquet(path: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """(where, row) pairs of a parquet file, through ``datasets.load_dataset("parquet", ...)``."""
    try:
        import datasets  # type: ignore[import-not-found]  # optional package: imported where used
    except ImportError:
        raise ClassificationError(f"{path}: reading parquet needs the `datasets` package: `pip install datasets`") from None
    try:
        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - not parquet, unreadable: one line
        raise ClassificationError(f"{path}: cannot read as parquet: {_one_line(e)}") from None
    return [(f"{path}: row {i}", dict(row)) for i, row in enumerate(table)]


def read_rows(path: Path, fmt: Optional[str] = None) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(where, row) pairs of a CSV with a header, a JSON list of objects, a JSONL or a parquet file."""
    kind = _file_format(path, fmt)
    if not path.is_file():
        raise ClassificationError(f"{path}: file not found")
    if kind == "parquet":
        yield from read_parquet(path)
        return
    line_no = 0
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first column.
        if kind == "csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if None in row:
                        raise ClassificationError(f"{path}:{reader.line_num}: more fields than the header has")
                    yield f"{path}:{reader.line_num}", row
            return
        with open(path, encoding="utf-8-sig") as f:
            if kind == "json":
                data = json.load(f)
                if not isinstance(data, list):
                    raise ClassificationError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
                items = [(f"{path}: item {i}", row) for i, row in enumerate(data)]
            else:
                items = []
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        items.append((f"{path}:{line_no}", json.loads(line)))
    except json.JSONDecodeError as e:
        line = line_no if kind == "jsonl" else e.lineno
        raise ClassificationError(f"{path}: invalid JSON at line {line} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise ClassificationError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ClassificationError(f"{path}: JSON nested too deeply to read; rows are flat objects") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ClassificationError(f"{path}: unreadable JSON ({json_cause(e)})") from None
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


def read_labels_txt(folder: Path) -> Optional[List[str]]:
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ClassificationError(f"{path}: not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


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
        import datasets  # type: ignore[import-not-found]  # optional package: imported where used
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
