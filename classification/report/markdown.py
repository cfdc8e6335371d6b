"""A Markdown report with plots from a set of metrics (or output) files.

    python run_report.py --inputs='[outputs/ag_news/k1, outputs/sst2/k1]' --out_dir outputs/report

Inputs are ``*.metrics.json`` files, output files with their metrics beside them, folders
(searched for ``*.metrics.json``) or glob patterns.  Runs are grouped by everything that
defines a run but the demonstration seed (dataset, k, method, model and tokenizer files,
precision, quantization, calibration flags, demonstrations, template...; :func:`run_setting`),
and only the seeds of a group are aggregated: mean ± sample std.  Runs of one dataset, k and
method in several settings get a row each, with the settings that tell them apart (v0, v1...
in the plots).  Writes ``report.md`` and PNGs (matplotlib, Agg backend) under ``out_dir/img``:

- ``confusion_<dataset>_k<k>_<method>[-v<i>]_seed<s>.png``: the confusion matrix of every run;
- ``reliability_<dataset>_k<k>.png``: a reliability diagram per method (bins pooled over seeds:
  accuracy per confidence bin against the diagonal, with the pooled ECE);
- ``accuracy_<dataset>_k<k>.png``: accuracy by method, one dot per seed, mean ± std bars.

The plots hold numbers and label words only (no dataset text).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from classification.cli import as_list
from classification.errors import ClassificationError, json_cause, writing
from classification.metrics import fmt_mean_std, mean_std
from classification.paths import report_image, report_images, report_path
from classification.report.table import label_rank, method_label

GroupKey = Tuple[str, Any, str, str]  # (dataset, k, method label, setting: "" or what tells it from the others)

# Fingerprint entries that change from seed to seed of one setting (the input records with their
# demonstrations, and the files calibrations make from them), or that do not change the results.
PER_SEED = ("data_sha256", "direct_output_sha256", "anchors_sha256", "save_hidden")
# What defines a run in a metrics file without a fingerprint.
RUN_SETTINGS = ("model", "tokenizer", "dtype", "device", "quantize", "scoring", "max_seq_len", "max_batch_size",
                "completion_end", "max_gen_len", "temperature", "top_p", "calibration", "content_free",
                "domain_premise", "batch_size", "n_anchor", "knn_k")
# The inputs' settings, recorded beside the scores (the method label is added to them).
INPUT_SETTINGS = ("dataset", "k", "n", "sample_seed", "demos", "demo_pool", "template")


def _metrics_files(inputs: Union[str, Sequence[str]]) -> List[Path]:
    parsed = as_list(inputs)
    items = [parsed] if isinstance(parsed, str) else list(parsed)
    if not items:
        raise ClassificationError("give one or more metrics files, output files or folders (--inputs)")
    found: List[Path] = []
    for item in items:
        item = str(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ClassificationError(f"--inputs {item}: no file matches")
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(item)]
        for path in paths:
            if path.is_dir():
                inside = sorted(path.rglob("*.metrics.json"))
                if not inside:
                    raise ClassificationError(f"--inputs {path}: folder has no *.metrics.json files")
                found.extend(inside)
            elif path.name.endswith(".metrics.json") and path.is_file():
                found.append(path)
            elif path.suffix == ".json" and path.with_suffix(".metrics.json").is_file():
                found.append(path.with_suffix(".metrics.json"))
            elif not path.exists():
                raise ClassificationError(f"--inputs {path}: no such file or folder")
            else:
                raise ClassificationError(f"--inputs {path}: not a metrics file, nor an output with one beside it")
    return list(OrderedDict.fromkeys(p.resolve() for p in found))


def _is_number(value: Any, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field_problem(m: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """(field, what it must be) for the first field the report reads that is malformed, else None."""
    for key, optional in (("accuracy", False), ("macro_f1", True), ("ece", True), ("n_none", True)):
        if not _is_number(m.get(key), optional):
            return key, "a number" if not optional else "a number or null"
    for key, kinds in (("seed", (int,)), ("k", (int,)), ("dataset", (str,)), ("sample_seed", (int,))):
        value = m.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            return key, f"{'an integer' if kinds == (int,) else 'a string'} or null"
    cm = m.get("confusion_matrix")
    if not isinstance(cm, dict) or not all(isinstance(cm.get(k), list) for k in ("matrix", "rows", "columns")):
        return "confusion_matrix", "an object with lists matrix, rows and columns"
    if not (all(isinstance(x, str) for x in cm["rows"] + cm["columns"]) and len(cm["matrix"]) == len(cm["rows"])
            and all(isinstance(r, list) and len(r) == len(cm["columns"]) for r in cm["matrix"])
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for r in cm["matrix"] for c in r)):
        return "confusion_matrix", "label names and a rows x columns matrix of counts"
    per_class = m.get("per_class")
    if not isinstance(per_class, dict) or not all(
            isinstance(v, dict) and all(_is_number(v.get(k), True) for k in ("precision", "recall", "f1"))
            for v in per_class.values()):
        return "per_class", "an object of per-label precision, recall and f1 numbers"
    bins = m.get("reliability")
    if bins is not None and not (isinstance(bins, list) and all(
            isinstance(b, dict) and isinstance(b.get("n"), int) and b["n"] >= 0
            and all(_is_number(b.get(k)) for k in ("lo", "hi"))
            and all(_is_number(b.get(k), not b["n"]) for k in ("confidence", "accuracy")) for b in bins)):
        return "reliability", "a list of bins (lo, hi, n, confidence, accuracy) or null"
    return None


def load_runs(inputs: Union[str, Sequence[str]]) -> List[Dict[str, Any]]:
    """The metrics dicts of the inputs, each with ``_label`` (method label) and ``_path``."""
    runs = []
    for path in _metrics_files(inputs):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise ClassificationError(f"metrics file {path} is not valid JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, not UTF-8, or an integer of more digits than Python converts
            raise ClassificationError(f"metrics file {path} is not valid JSON: {json_cause(e)}") from None
        if not isinstance(m, dict) or "accuracy" not in m or "confusion_matrix" not in m:
            raise ClassificationError(f"{path} is not a metrics file (no accuracy or confusion_matrix)")
        problem = _field_problem(m)
        if problem is not None:
            key, need = problem
            raise ClassificationError(
                f"metrics file {path}: {key} is {_short(repr(m.get(key)), 40)}, expected {need}; the file is damaged "
                "or edited: rerun that method, or leave the file out of --inputs"
            )
        m["_label"] = method_label(m)
        m["_path"] = str(path)
        m.setdefault("dataset", None)
        runs.append(m)
    return runs


def run_setting(m: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that defines the run of metrics ``m`` but its demonstration seed: its fingerprint
    (model and tokenizer files by content, precision, quantization, calibration and its flags, ...)
    without the per-seed entries, the inputs' settings and the method label."""
    fingerprint = m.get("fingerprint")
    if isinstance(fingerprint, dict):
        setting = {k: v for k, v in fingerprint.items() if k not in PER_SEED}
    else:
        setting = {k: m.get(k) for k in RUN_SETTINGS}
    setting.update({k: m.get(k) for k in INPUT_SETTINGS})
    setting["method"] = m["_label"]
    return setting


def _setting_text(key: str, value: Any, m: Dict[str, Any]) -> str:
    """One setting as the table shows it: files by their path and a short hash of their content."""
    if isinstance(value, (dict, list)):
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
        path = m.get(key[: -len("_files")]) if key.endswith("_files") else None
        return f"{key[: -len('_files')]} {path} #{digest}" if path else f"{key} #{digest}"
    text = str(value).replace("\n", "\\n").replace("|", "\\|")  # one table cell (templates hold newlines)
    return f"{key} {_short(text, 40)}"


def group_runs(runs: Sequence[Dict[str, Any]]) -> "OrderedDict[GroupKey, List[Dict[str, Any]]]":
    """Runs by setting (:func:`run_setting`: only their seeds differ within a group), ordered by
    dataset, k, method; each group by seed.  The key's last part tells groups of one dataset, k
    and method apart: the settings in which they differ (empty when there is one such group)."""
    by_setting: Dict[str, List[Dict[str, Any]]] = {}
    for m in runs:
        key = json.dumps(run_setting(m), sort_keys=True, default=str)
        by_setting.setdefault(key, []).append(m)
    buckets: Dict[Tuple[str, Any, str], List[List[Dict[str, Any]]]] = {}
    for members in by_setting.values():
        m = members[0]
        buckets.setdefault((m.get("dataset") or "unknown", m.get("k"), m["_label"]), []).append(members)
    groups: Dict[GroupKey, List[Dict[str, Any]]] = {}
    for (dataset, k, label), variants in buckets.items():
        settings = [run_setting(members[0]) for members in variants]
        differ = sorted(key for key in set().union(*settings)
                        if len({json.dumps(s.get(key), sort_keys=True, default=str) for s in settings}) > 1)
        for members, setting in zip(variants, settings):
            text = ", ".join(_setting_text(key, setting.get(key), members[0]) for key in differ)
            groups[(dataset, k, label, text)] = members
    ordered = sorted(groups, key=lambda g: (g[0], str(g[1]), label_rank(g[2]), g[2], g[3]))
    return OrderedDict(
        (g, sorted(groups[g], key=lambda m: (m.get("seed") is None, m.get("seed") or 0))) for g in ordered
    )


def pool_bins(runs: Sequence[Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
    """Reliability bins of several runs pooled (counts added, confidence/accuracy count-weighted)."""
    lists = [m.get("reliability") for m in runs]
    if not lists or any(not b for b in lists):
        return None
    pooled = []
    for bins in zip(*lists):
        n = sum(b["n"] for b in bins)
        conf = sum(b["n"] * b["confidence"] for b in bins if b["n"]) / n if n else None
        acc = sum(b["n"] * b["accuracy"] for b in bins if b["n"]) / n if n else None
        pooled.append({"lo": bins[0]["lo"], "hi": bins[0]["hi"], "n": n, "confidence": conf, "accuracy": acc})
    return pooled


def bins_ece(bins: Sequence[Dict[str, Any]]) -> float:
    total = sum(b["n"] for b in bins)
    return sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"]) if total else 0.0


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    try:
        import matplotlib  # third-party and slow to import, needed by the plots only: imported where used
    except ImportError:
        raise ClassificationError("the report's plots need matplotlib: pip install -r requirements.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(m: Dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    cm = m["confusion_matrix"]
    matrix, rows, cols = cm["matrix"], cm["rows"], cm["columns"]
    size = 2.0 + 0.45 * max(len(cols), 3)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    top = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if top and count > top / 2 else "black")
    ax.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    seed = "" if m.get("seed") is None else f", seed {m['seed']}"
    ax.set_title(f"{m.get('dataset') or ''} {m['_label']}{seed}\naccuracy {m['accuracy']:.3f}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def plot_reliability(groups: Sequence[Tuple[str, List[Dict[str, Any]]]], title: str, path: Path) -> bool:
    """One panel per method with label probabilities; False (nothing written) when there is none."""
    panels = [(label, bins) for label, bins in ((label, pool_bins(runs)) for label, runs in groups) if bins]
    if not panels:
        return False
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, bins) in zip(axes.flat, panels):
        width = bins[0]["hi"] - bins[0]["lo"]
        filled = [b for b in bins if b["n"]]
        centers = [b["lo"] + width / 2 for b in filled]
        ax.bar(centers, [b["accuracy"] for b in filled], width=width * 0.9, color="#4C72B0", label="accuracy")
        ax.bar(centers, [abs(b["confidence"] - b["accuracy"]) for b in filled], width=width * 0.9,
               bottom=[min(b["confidence"], b["accuracy"]) for b in filled], color="#C44E52", alpha=0.35,
               hatch="//", edgecolor="#C44E52", label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        for x, b in zip(centers, filled):
            top = max(b["accuracy"], b["confidence"])
            ax.text(x, top + 0.02, str(b["n"]), ha="center", fontsize=6, color="#333333")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.1)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title(f"{label}  (ECE {bins_ece(bins):.3f})", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6, loc="upper left", title="number: examples per bin", title_fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_accuracy(groups: Sequence[Tuple[str, List[Dict[str, Any]]]], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(groups), 3.2))
    n_labels = None
    for x, (label, runs) in enumerate(groups):
        accs = [m["accuracy"] for m in runs]
        offsets = [(i - (len(accs) - 1) / 2) * 0.08 for i in range(len(accs))]
        ax.plot([x + o for o in offsets], accs, "o", color="#4C72B0", markersize=4, alpha=0.7)
        stat = mean_std(accs)
        ax.errorbar([x + 0.25], [stat["mean"]], yerr=[stat["std"]], fmt="s", color="black", markersize=4, capsize=3)
        n_labels = len(runs[0]["confusion_matrix"]["rows"])
    if n_labels:
        ax.axhline(1 / n_labels, linestyle=":", color="gray", linewidth=1)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.04)
    ax.set_ylabel("accuracy")
    ax.set_title(title + "\ndots: seeds; black: mean ± std; dotted: chance", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Markdown


def results_table(groups: "OrderedDict[GroupKey, List[Dict[str, Any]]]") -> str:
    """One row per setting; a setting column when runs of one dataset, k and method differ otherwise."""
    with_setting = any(setting for _, _, _, setting in groups)
    extra = (" setting |", "---|") if with_setting else ("", "")
    lines = [
        f"| dataset | k | method |{extra[0]} seeds | n | accuracy | macro-F1 | ECE | none |",
        f"|---|---:|---|{extra[1]}---|---:|---:|---:|---:|---:|",
    ]
    for (dataset, k, label, setting), runs in groups.items():
        seeds = ", ".join(str(m.get("seed")) for m in runs)
        n = "/".join(sorted({str(m.get("n")) for m in runs}))
        stats = [fmt_mean_std(mean_std([m.get(key) for m in runs])) for key in ("accuracy", "macro_f1", "ece")]
        none = mean_std([m.get("n_none", 0) for m in runs])["mean"]
        none_cell = f"{none:.1f}" if label == "generate" else "-"
        cell = f" {setting or '-'} |" if with_setting else ""
        lines.append(f"| {dataset} | {k} | {label} |{cell} {seeds} | {n} | " + " | ".join(stats) + f" | {none_cell} |")
    return "\n".join(lines)


def per_class_table(groups: Sequence[Tuple[str, List[Dict[str, Any]]]]) -> str:
    """Per-class precision / recall / F1, averaged over seeds, one row per method."""
    classes = list(groups[0][1][0]["per_class"])
    head = "| method | " + " | ".join(f"{_short(c, 20)} P / R / F1" for c in classes) + " |"
    lines = [head, "|---|" + "---:|" * len(classes)]
    for label, runs in groups:
        cells = []
        for c in classes:
            vals = [mean_std([m["per_class"].get(c, {}).get(key) for m in runs])["mean"]
                    for key in ("precision", "recall", "f1")]
            cells.append(" / ".join("-" if v is None else f"{v:.2f}" for v in vals))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(
    inputs: Union[str, Sequence[str]], out_dir: str = "outputs/report", title: str = "Classification report"
) -> str:
    """Write ``out_dir/report.md`` and its PNGs; returns the report's path."""
    runs = load_runs(inputs)
    groups = group_runs(runs)
    with writing(Path(out_dir), "--out_dir"):  # a read-only folder or a full disk: one line
        return _write_report(runs, groups, out_dir, title)


def _write_report(
    runs: List[Dict[str, Any]], groups: "OrderedDict[GroupKey, List[Dict[str, Any]]]", out_dir: str, title: str
) -> str:
    path = report_path(out_dir)
    img = report_images(out_dir)
    img.mkdir(parents=True, exist_ok=True)
    datasets: Dict[Tuple[str, Any], List[Tuple[str, str, List[Dict[str, Any]]]]] = OrderedDict()
    for (dataset, k, label, setting), members in groups.items():
        datasets.setdefault((dataset, k), []).append((label, setting, members))
    n_seeds = max(len(members) for members in groups.values())
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} runs; mean ± sample std (n - 1) over seeds "
        f"(up to {n_seeds} per group). ECE: expected calibration error of the label probabilities "
        "normalized over the label words (10 equal-width bins); none: generations that name no label.",
        "",
        results_table(groups),
        "",
    ]
    for (dataset, k), entries in datasets.items():
        # One method in several settings: "direct v0", "direct v1"... in the plots, spelled out here.
        short = [f"{label} v{i}" if setting else label for i, (label, setting, _) in enumerate(entries)]
        members = [(tag, seed_runs) for tag, (_, _, seed_runs) in zip(short, entries)]
        name = f"{dataset}, k={k}"
        lines += [f"## {name}", ""]
        lines += [f"- {tag}: {setting}" for tag, (_, setting, _) in zip(short, entries) if setting]
        lines += [""] if any(setting for _, setting, _ in entries) else []
        acc_png = report_image(out_dir, "accuracy", dataset, f"k{k}")
        plot_accuracy(members, f"{name}: accuracy by method", acc_png)
        lines += [f"![accuracy by method, {name}](img/{acc_png.name})", ""]
        rel_png = report_image(out_dir, "reliability", dataset, f"k{k}")
        if plot_reliability(members, f"{name}: reliability (bins pooled over seeds)", rel_png):
            lines += [f"![reliability diagrams, {name}](img/{rel_png.name})", ""]
        lines += ["Per-class precision / recall / F1 (mean over seeds):", "", per_class_table(members), ""]
        lines += ["Confusion matrices (rows: true label, columns: prediction):", ""]
        for shown, seed_runs in members:
            cells = []
            for m in seed_runs:
                png = report_image(out_dir, "confusion", dataset, f"k{k}", shown, "seed" + str(m.get("seed")))
                plot_confusion(m, png)
                cells.append(f"![{shown} seed {m.get('seed')}](img/{png.name})")
            lines += [f"**{shown}**", "", " ".join(cells), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"Wrote {path} ({len(runs)} runs, {len(list(img.glob('*.png')))} images in {img})")
    return str(path)
