"""One method (or several) over several demonstration seeds: per-seed files and mean ± std.

For every seed the dataset's input records are rebuilt with that seed's demonstrations (``k``
per class) and the *same* test sample (``sample_seed``), so the spread over seeds is the spread
due to the choice and order of the demonstrations.  Layout under ``out_dir``
(default ``outputs/<dataset>/k<k>``)::

    seed<s>/inputs_direct.json, seed<s>/inputs_channel.json
    seed<s>/inputs_direct.anchors.json              (with an anchor calibration: n_anchor per class)
    seed<s>/outputs_<method>.json + .metrics.json   (method: direct, na, cbu, dcpmi, batch, channel, generate, ...)
    seed<s>/outputs_direct.hidden.npy, outputs_direct.anchors.*   (with an anchor calibration)
    summary.json, summary.md                         (each seed, mean and sample std (n - 1) over seeds)

The calibrations (na, cbu, dcpmi, batch) re-score each seed's direct outputs post hoc.  With an
anchor calibration in ``methods`` (:data:`classification.anchors.NAMES`) each seed's inputs
also get ``n_anchor`` labeled anchors per class (drawn with that seed, never demonstrations;
the test records are the same), the direct run saves its hidden states, and the first anchor
calibration of a seed scores the anchors once.  A run
whose outputs already exist with the same fingerprint is not scored again, so an interrupted
command picks up where it stopped (and a half-finished run resumes from its partial file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from classification import anchors
from classification.backend.loader import load_lm
from classification.calibrations import CALIBRATIONS
from classification.cli import as_list
from classification.errors import ClassificationError, check_int, writing
from classification.fileio import write_json_atomic
from classification.inputs.datasets import Dataset, load_dataset, random_demo_records
from classification.inputs.presets import PRESETS
from classification.inputs.retrieval import check_demos, records_and_anchors
from classification.metrics import fmt_mean_std, mean_std
from classification.provenance import MODEL_KEYS
from classification.paths import (
    DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, anchors_path, seed_inputs_path, seed_outputs_path, seeds_dir, summary_paths,
)
from classification.records import read_json
from classification.report.table import method_label
from classification.run.runner import evaluate
from classification.templates import parse_template, unescape_cli

ALL_METHODS = ("direct",) + tuple(CALIBRATIONS) + ("channel", "generate")
# The default --methods: every method but the variants kept for comparison and the calibrations
# on anchors (they score the anchors too: add them to --methods).
SEED_METHODS = tuple(m for m in ALL_METHODS if m not in ("batch_logmean",) + anchors.NAMES)
DEFAULT_N_ANCHOR = 32
SEED_DEMOS = ("random", "bm25")  # knn demonstrations need the embedder: run_preprocess.py
SPEC_KEYS = ("preset", "data_dir", "train", "test", "hub", "text_column", "label_column", "label_words",
             "test_size", "split_seed", "name", "templates", "instruction")
SUMMARY_METRICS = ("accuracy", "macro_f1", "ece")


def load_spec(dataset: str, data_dir: Optional[str] = None) -> Dataset:
    """A preset name or a dataset spec JSON file (run_preprocess.py's flags, plus ``templates``)."""
    if dataset in PRESETS:
        spec: Dict[str, Any] = {"preset": dataset}
    elif dataset.endswith(".json"):
        spec = read_json(dataset, "dataset spec", "--dataset")
        if not isinstance(spec, dict):
            raise ClassificationError(f"--dataset {dataset}: expected a JSON object with keys like {SPEC_KEYS[:4]}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ClassificationError(f"--dataset {dataset}: unknown key(s) {unknown}; known: {', '.join(SPEC_KEYS)}")
    else:
        raise ClassificationError(
            f"unknown preset {dataset!r}; use one of {', '.join(PRESETS)} or a dataset spec .json file"
        )
    if data_dir is not None:
        spec["data_dir"] = data_dir
    templates = spec.pop("templates", None)
    instruction = spec.pop("instruction", None)
    loaded = load_dataset(**spec)
    if templates is not None:
        if not isinstance(templates, dict) or not set(templates) <= {"direct", "channel"}:
            raise ClassificationError('"templates" must map "direct" and/or "channel" to a template')
        for method, template in templates.items():
            loaded.templates[method] = unescape_cli(template)
            parse_template(loaded.templates[method], method)
        loaded.instruction = ""
    if instruction is not None:
        loaded.instruction = str(instruction)
    return loaded


def _list(value: Union[str, int, Sequence[Any]], flag: str) -> List[Any]:
    value = as_list(value)
    if isinstance(value, (str, int)):
        items: List[Any] = [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ClassificationError(f"{flag} must be a list, got {value!r}")
    if not items:
        raise ClassificationError(f"{flag} is empty")
    return items


def check_methods(methods: Union[str, Sequence[str]]) -> List[str]:
    chosen = [str(m) for m in _list(methods, "--methods")]
    unknown = [m for m in chosen if m not in ALL_METHODS]
    if unknown:
        raise ClassificationError(f"--methods: unknown {unknown[0]!r}; use some of {', '.join(ALL_METHODS)}")
    if len(set(chosen)) != len(chosen):
        raise ClassificationError(f"--methods has duplicates: {chosen}")
    calibrations = [m for m in chosen if m in CALIBRATIONS]
    if calibrations and "direct" not in chosen:
        raise ClassificationError(
            f"calibration {calibrations[0]} needs the direct run's files: add direct to --methods"
        )
    return sorted(chosen, key=ALL_METHODS.index)


def check_seeds(seeds: Union[str, int, Sequence[Any]]) -> List[int]:
    out = []
    for s in _list(seeds, "--seeds"):
        try:
            out.append(int(s))
        except (TypeError, ValueError):
            raise ClassificationError(f"--seeds must be integers, got {s!r}") from None
    if len(set(out)) != len(out):
        raise ClassificationError(f"--seeds has duplicates: {out}")
    return out


def summarize(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Per method label: each seed's accuracy, macro-F1, ECE, none count, and mean ± std of each."""
    out: Dict[str, Any] = {}
    for label, metrics_list in runs.items():
        per_seed = [
            {"seed": m.get("seed"), "n": m.get("n"), "n_none": m.get("n_none"),
             **{key: m.get(key) for key in SUMMARY_METRICS},
             # which file each number is from (its run's metrics hold the rest of its provenance)
             "output_path": m.get("output_path"), "output_sha256": m.get("output_sha256")}
            for m in metrics_list
        ]
        out[label] = {"per_seed": per_seed, **{key: mean_std([r[key] for r in per_seed]) for key in SUMMARY_METRICS}}
    return out


def summary_table(summary: Dict[str, Any], seeds: Sequence[int]) -> str:
    """Markdown: one row per method, one column per seed (accuracy), then mean ± std columns."""
    head = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | accuracy | macro-F1 | ECE |"
    lines = [head, "|---|" + "---:|" * (len(seeds) + 3)]
    for label, entry in summary.items():
        by_seed = {r["seed"]: r["accuracy"] for r in entry["per_seed"]}
        cells = [f"{by_seed[s]:.4f}" if by_seed.get(s) is not None else "-" for s in seeds]
        stats = " | ".join(fmt_mean_std(entry[key]) for key in SUMMARY_METRICS)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {stats} |")
    return "\n".join(lines)


def run_seeds(
    dataset: str,
    data_dir: Optional[str] = None,
    methods: Union[str, Sequence[str]] = SEED_METHODS,
    k: int = 1,
    seeds: Union[str, int, Sequence[int]] = (1, 2, 3),
    n_sample: int = 300,
    out_dir: Optional[str] = None,
    sample_seed: int = 0,
    max_gen_len: int = 10,
    lm: Optional[Any] = None,
    runtime: Optional[Any] = None,
    n_anchor: int = DEFAULT_N_ANCHOR,
    demos: str = "random",
    demo_pool: Optional[int] = None,
    **model: Any,
) -> Dict[str, Any]:
    """Run ``methods`` for every seed, write per-seed files and ``summary.json``/``summary.md``.

    ``n_anchor``: anchors per class for the anchor calibrations (written only when one is in ``methods``).
    ``demos``: random, or bm25 (each prompt's demonstrations retrieved for its input from a pool of
    ``demo_pool`` training examples drawn with the seed; :mod:`classification.inputs.retrieval`).

    ``model``: ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring, model_parallel_size, quantize
    (as for :func:`classification.run.runner.evaluate`); ``lm``/``runtime``: an already built model.
    Returns the summary (on the main rank; None elsewhere).
    """
    chosen = check_methods(methods)
    seed_list = check_seeds(seeds)
    check_int("--k", k, 0)
    check_int("--n_sample", n_sample, 0)
    if demos not in SEED_DEMOS:
        raise ClassificationError(f"--demos {demos!r} is not one of {', '.join(SEED_DEMOS)} here; "
                                  "knn demonstrations: preprocess each seed with run_preprocess.py --demos knn")
    check_demos(demos, demo_pool, None, n_anchor)
    data = load_spec(dataset, data_dir)
    root = Path(out_dir) if out_dir else seeds_dir(data.name, k, demos)
    needed = {"direct"} if any(m in chosen for m in ("direct", "generate") + tuple(CALIBRATIONS)) else set()
    needed |= {"channel"} if "channel" in chosen else set()
    anchored = any(m in anchors.NAMES for m in chosen)
    if anchored:
        check_int("--n_anchor", n_anchor, 1)
    inputs = write_inputs(data, root, sorted(needed), seed_list, k, n_sample, sample_seed, n_anchor if anchored else 0,
                          demos, demo_pool)
    if lm is None:
        lm = load_lm(
            model.get("ckpt_dir", DEFAULT_CKPT_DIR), model.get("tokenizer_path", DEFAULT_TOKENIZER_PATH),
            max_seq_len=model.get("max_seq_len", 2048), max_batch_size=model.get("max_batch_size", 16),
            dtype=model.get("dtype"), device=model.get("device"), scoring=model.get("scoring", "fast"),
            model_parallel_size=model.get("model_parallel_size"), quantize=model.get("quantize", "none"),
        )
        runtime = lm.runtime
    runs: Dict[str, List[Dict[str, Any]]] = {}
    is_main = runtime is None or bool(runtime.is_main)
    for method in chosen:  # method-major: every seed's cheap runs come before the slow ones
        for seed in seed_list:
            args: Dict[str, Any] = dict(model, lm=lm, runtime=runtime, reuse=True)
            if method == "direct" and anchored:
                args["save_hidden"] = True  # what the anchor calibrations read
            metrics = run_method(method, root, seed, inputs[seed], max_gen_len, args)
            if metrics is not None:
                runs.setdefault(method_label(metrics), []).append(metrics)
    if not is_main:
        return {}
    fingerprint = next((m.get("fingerprint") or {} for ms in runs.values() for m in ms), {})
    summary = {
        "dataset": data.name, "k": k, "demos": demos, "demo_pool": demo_pool, "seeds": seed_list,
        "n_sample": n_sample, "sample_seed": sample_seed,
        "made_from": {"sources_sha256": data.sources_sha256, **{key: fingerprint.get(key) for key in MODEL_KEYS}},
        "methods": summarize(runs),
    }
    write_summary(summary, root)
    return summary


def write_inputs(
    data: Dataset, root: Path, methods: Sequence[str], seed_list: Sequence[int], k: int, n_sample: int,
    sample_seed: int, n_anchor: int = 0, demos: str = "random", demo_pool: Optional[int] = None,
) -> Dict[int, Dict[str, str]]:
    """{seed: {method: input file}}: every seed's inputs first, so a bad k or sample fails before any
    scoring; ``n_anchor``: the direct inputs' anchors per class too (``<inputs stem>.anchors.json``)."""
    inputs: Dict[int, Dict[str, str]] = {}
    for seed in seed_list:
        inputs[seed] = {}
        for method in methods:
            path = seed_inputs_path(root, seed, method)
            if (method == "direct" and n_anchor) or demos != "random":
                # The same test records as without anchors (random demonstrations are drawn first);
                # retrieved demonstrations are chosen per record (and per anchor) here.
                records, anchor_records = records_and_anchors(
                    data, method, None, k, seed, n_sample > 0, n_sample, sample_seed, demos, demo_pool,
                    n_anchor if method == "direct" else 0)
                if anchor_records:
                    write_json_atomic(anchors_path(str(path)), anchor_records, indent=2)
            else:
                records = random_demo_records(data, method, k=k, seed=seed, sample=n_sample > 0, n_sample=n_sample,
                                              sample_seed=sample_seed)
            write_json_atomic(str(path), records, indent=2)
            inputs[seed][method] = str(path)
    return inputs


def run_method(
    method: str, root: Path, seed: int, inputs: Dict[str, str], max_gen_len: int, args: Dict[str, Any]
) -> Optional[Dict[str, Any]]:
    """One seed's run of ``method`` (a calibration re-scores that seed's direct run)."""
    out = str(seed_outputs_path(root, seed, method))
    if method in CALIBRATIONS:
        args.update(direct_output_path=str(seed_outputs_path(root, seed, "direct")), calibration=method)
        return evaluate("calibrate", inputs["direct"], out, **args)
    if method == "generate":
        return evaluate("generate", inputs["direct"], out, max_gen_len=max_gen_len, **args)
    return evaluate(method, inputs[method], out, **args)


def write_summary(summary: Dict[str, Any], root: Path) -> None:
    """``summary.json`` and the table as ``summary.md``; print the table."""
    seed_list = summary["seeds"]
    table = summary_table(summary["methods"], seed_list)
    json_path, md_path = summary_paths(root)
    write_json_atomic(str(json_path), summary, indent=2)
    with writing(md_path):
        md_path.write_text(f"{summary['dataset']}, k={summary['k']}, seeds {seed_list}: accuracy per seed, "
                           "mean ± std\n\n" + table + "\n", encoding="utf-8")
    print(table)
    print(f"Wrote {json_path} and {md_path}")
