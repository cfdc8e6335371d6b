"""A Markdown report with plots from a set of metrics (or output) files.

    python run_report.py --inputs='[outputs/ag_news/k1, outputs/sst2/k1]' --out_dir outputs/report

Inputs are ``*.metrics.json`` files, output files with their metrics beside them, folders
(searched for ``*.metrics.json``) or glob patterns.  Runs are grouped by dataset × method × k
(the seeds of a group are aggregated: mean ± sample std).  Writes ``report.md`` and PNGs
(matplotlib, Agg backend) under ``out_dir/img``:

- ``confusion_<dataset>_k<k>_<method>_seed<s>.png``: the confusion matrix of every run;
- ``reliability_<dataset>_k<k>.png``: a reliability diagram per method (bins pooled over seeds:
  accuracy per confidence bin against the diagonal, with the pooled ECE);
- ``accuracy_<dataset>_k<k>.png``: accuracy by method, one dot per seed, mean ± std bars.

The plots hold numbers and label words only (no dataset text).
"""

from __future__ import annotations

import glob
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from classification.cli import as_list
from classification.errors import ClassificationError
from classification.metrics import fmt_mean_std, mean_std
from classification.paths import report_image, report_images, report_path
from classification.report.table import label_rank, method_label

GroupKey = Tuple[str, Any, str]  # (dataset, k, method label)


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


def load_runs(inputs: Union[str, Sequence[str]]) -> List[Dict[str, Any]]:
    """The metrics dicts of the inputs, each with ``_label`` (method label) and ``_path``."""
    runs = []
    for path in _metrics_files(inputs):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ClassificationError(f"metrics file {path} is not valid JSON: {e}") from None
        if not isinstance(m, dict) or "accuracy" not in m or "confusion_matrix" not in m:
            raise ClassificationError(f"{path} is not a metrics file (no accuracy or confusion_matrix)")
        m["_label"] = method_label(m)
        m["_path"] = str(path)
        m.setdefault("dataset", None)
        runs.append(m)
    return runs


def group_runs(runs: Sequence[Dict[str, Any]]) -> "OrderedDict[GroupKey, List[Dict[str, Any]]]":
    """Runs by (dataset, k, method label), ordered by dataset, k, method; each group by seed."""
    groups: Dict[GroupKey, List[Dict[str, Any]]] = {}
    for m in runs:
        groups.setdefault((m.get("dataset") or "unknown", m.get("k"), m["_label"]), []).append(m)
    ordered = sorted(groups, key=lambda g: (g[0], str(g[1]), label_rank(g[2]), g[2]))
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
    lines = [
        "| dataset | k | method | seeds | n | accuracy | macro-F1 | ECE | none |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for (dataset, k, label), runs in groups.items():
        seeds = ", ".join(str(m.get("seed")) for m in runs)
        n = "/".join(sorted({str(m.get("n")) for m in runs}))
        stats = [fmt_mean_std(mean_std([m.get(key) for m in runs])) for key in ("accuracy", "macro_f1", "ece")]
        none = mean_std([m.get("n_none", 0) for m in runs])["mean"]
        none_cell = f"{none:.1f}" if label == "generate" else "-"
        lines.append(f"| {dataset} | {k} | {label} | {seeds} | {n} | " + " | ".join(stats) + f" | {none_cell} |")
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
    path = report_path(out_dir)
    img = report_images(out_dir)
    img.mkdir(parents=True, exist_ok=True)
    datasets: Dict[Tuple[str, Any], List[Tuple[str, List[Dict[str, Any]]]]] = OrderedDict()
    for (dataset, k, label), members in groups.items():
        datasets.setdefault((dataset, k), []).append((label, members))
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
    for (dataset, k), members in datasets.items():
        name = f"{dataset}, k={k}"
        lines += [f"## {name}", ""]
        acc_png = report_image(out_dir, "accuracy", dataset, f"k{k}")
        plot_accuracy(members, f"{name}: accuracy by method", acc_png)
        lines += [f"![accuracy by method, {name}](img/{acc_png.name})", ""]
        rel_png = report_image(out_dir, "reliability", dataset, f"k{k}")
        if plot_reliability(members, f"{name}: reliability (bins pooled over seeds)", rel_png):
            lines += [f"![reliability diagrams, {name}](img/{rel_png.name})", ""]
        lines += ["Per-class precision / recall / F1 (mean over seeds):", "", per_class_table(members), ""]
        lines += ["Confusion matrices (rows: true label, columns: prediction):", ""]
        for label, seed_runs in members:
            cells = []
            for m in seed_runs:
                png = report_image(out_dir, "confusion", dataset, f"k{k}", label, "seed" + str(m.get("seed")))
                plot_confusion(m, png)
                cells.append(f"![{label} seed {m.get('seed')}](img/{png.name})")
            lines += [f"**{label}**", "", " ".join(cells), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"Wrote {path} ({len(runs)} runs, {len(list(img.glob('*.png')))} images in {img})")
    return str(path)
