"""One method (or several) over several demonstration seeds: per-seed files and mean ± std.

For every seed the dataset's input records are rebuilt with that seed's demonstrations (``k``
per class) and the *same* test sample (``sample_seed``), so the spread over seeds is the spread
due to the choice and order of the demonstrations.  Layout under ``out_dir``
(default ``outputs/<dataset>/k<k>``)::

    seed<s>/inputs_direct.json, seed<s>/inputs_channel.json
    seed<s>/outputs_<method>.json + .metrics.json   (method: direct, na, cbu, dcpmi, batch, channel, generate)
    summary.json, summary.md                         (each seed, mean and sample std (n - 1) over seeds)

The calibrations (na, cbu, dcpmi, batch) re-score each seed's direct outputs post hoc.  A run
whose outputs already exist with the same fingerprint is not scored again, so an interrupted
command picks up where it stopped (and a half-finished run resumes from its partial file).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from classification import anchors
from classification.run import runner
from classification.cli import as_list
from classification.inputs.datasets import Dataset, load_dataset, make_records
from classification.inputs.presets import PRESETS
from classification.errors import ClassificationError, check_int
from classification.fileio import write_json_atomic
from classification.calibrations import CALIBRATIONS
from classification.report.table import method_label
from classification.templates import parse_template, unescape_cli

ALL_METHODS = ("direct",) + tuple(CALIBRATIONS) + ("channel", "generate")
# The default --methods: every method but the variants kept for comparison and the calibrations
# on anchors (they need hidden states and anchor records that the seeds command does not write).
SEED_METHODS = tuple(m for m in ALL_METHODS if m not in ("batch_logmean",) + anchors.NAMES)
SPEC_KEYS = ("preset", "data_dir", "train", "test", "hub", "text_column", "label_column", "label_words",
             "test_size", "split_seed", "name", "templates", "instruction")
SUMMARY_METRICS = ("accuracy", "macro_f1", "ece")


def load_spec(dataset: str, data_dir: Optional[str] = None) -> Dataset:
    """A preset name or a dataset spec JSON file (run_preprocess.py's flags, plus ``templates``)."""
    if dataset in PRESETS:
        spec: Dict[str, Any] = {"preset": dataset}
    elif dataset.endswith(".json"):
        from classification.records import read_json

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


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarize(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Per method label: each seed's accuracy, macro-F1, ECE, none count, and mean ± std of each."""
    out: Dict[str, Any] = {}
    for label, metrics_list in runs.items():
        per_seed = [
            {"seed": m.get("seed"), "n": m.get("n"), "n_none": m.get("n_none"),
             **{key: m.get(key) for key in SUMMARY_METRICS}}
            for m in metrics_list
        ]
        out[label] = {"per_seed": per_seed, **{key: mean_std([r[key] for r in per_seed]) for key in SUMMARY_METRICS}}
    return out


def fmt_mean_std(stat: Dict[str, Optional[float]]) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


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
    **model: Any,
) -> Dict[str, Any]:
    """Run ``methods`` for every seed, write per-seed files and ``summary.json``/``summary.md``.

    ``model``: ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring, model_parallel_size, quantize
    (as for :func:`classification.run.runner.evaluate`); ``lm``/``runtime``: an already built model.
    Returns the summary (on the main rank; None elsewhere).
    """
    chosen = check_methods(methods)
    seed_list = check_seeds(seeds)
    check_int("--k", k, 0)
    check_int("--n_sample", n_sample, 0)
    data = load_spec(dataset, data_dir)
    root = Path(out_dir or f"outputs/{data.name}/k{k}")
    needed = {"direct"} if any(m in chosen for m in ("direct", "generate") + tuple(CALIBRATIONS)) else set()
    needed |= {"channel"} if "channel" in chosen else set()
    inputs: Dict[int, Dict[str, str]] = {}
    for seed in seed_list:  # every seed's inputs first: a bad k or sample fails before any scoring
        inputs[seed] = {}
        for method in sorted(needed):
            records = make_records(data, method, k=k, seed=seed, sample=n_sample > 0, n_sample=n_sample,
                                   sample_seed=sample_seed)
            path = root / f"seed{seed}" / f"inputs_{method}.json"
            write_json_atomic(str(path), records, indent=2)
            inputs[seed][method] = str(path)
    if lm is None:
        lm, runtime = runner.load_model(
            model.get("ckpt_dir", runner.DEFAULT_CKPT_DIR), model.get("tokenizer_path", runner.DEFAULT_TOKENIZER_PATH),
            model.get("max_seq_len", 2048), model.get("max_batch_size", 16), model.get("dtype"), model.get("device"),
            model.get("scoring", "fast"), append_eos=True, model_parallel_size=model.get("model_parallel_size"),
            quantize=model.get("quantize", "none"),
        )
    runs: Dict[str, List[Dict[str, Any]]] = {}
    is_main = runtime is None or bool(runtime.is_main)
    for method in chosen:  # method-major: every seed's cheap runs come before the slow ones
        for seed in seed_list:
            out = str(root / f"seed{seed}" / f"outputs_{method}.json")
            args: Dict[str, Any] = dict(model, lm=lm, runtime=runtime, reuse=True)
            if method in CALIBRATIONS:
                args.update(direct_output_path=str(root / f"seed{seed}" / "outputs_direct.json"), calibration=method)
                metrics = runner.evaluate("calibrate", inputs[seed]["direct"], out, **args)
            elif method == "generate":
                metrics = runner.evaluate("generate", inputs[seed]["direct"], out, max_gen_len=max_gen_len, **args)
            else:
                metrics = runner.evaluate(method, inputs[seed][method], out, **args)
            if metrics is not None:
                runs.setdefault(method_label(metrics), []).append(metrics)
    if not is_main:
        return {}
    summary = {
        "dataset": data.name, "k": k, "seeds": seed_list, "n_sample": n_sample, "sample_seed": sample_seed,
        "methods": summarize(runs),
    }
    table = summary_table(summary["methods"], seed_list)
    write_json_atomic(str(root / "summary.json"), summary, indent=2)
    (root / "summary.md").write_text(f"{data.name}, k={k}, seeds {seed_list}: accuracy per seed, mean ± std\n\n"
                                     + table + "\n", encoding="utf-8")
    print(table)
    print(f"Wrote {root / 'summary.json'} and {root / 'summary.md'}")
    return summary
