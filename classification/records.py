"""Input records and output records: reading and checking input files and direct output files
(one-line errors for bad input), and building the output records of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from classification.errors import ClassificationError, json_cause

REQUIRED_KEYS = ("prompt", "completion", "text", "label_words", "ground_truth")


def read_json(path: str, what: str, flag: str) -> Any:
    """Parse a JSON file, turning a missing file or bad JSON into a one-line error."""
    p = Path(path)
    if not p.is_file():
        inputs = flag in ("--data_path", "--direct_input_path")
        hint = "; create it with run_preprocess.py (or run_preprocess_*_ag_news.py)" if inputs else ""
        raise ClassificationError(f"{flag} {path}: {what} file not found{hint}")
    try:
        with open(p, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ClassificationError(f"{flag} {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise ClassificationError(f"{flag} {path}: not UTF-8 text") from None
    except RecursionError:
        raise ClassificationError(f"{flag} {path}: JSON nested too deeply to read; is it the {what} file?") from None
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise ClassificationError(f"{flag} {path}: unreadable JSON ({json_cause(e)})") from None


def _check_template(record: Dict[str, Any], i: int, method: str, path: str) -> None:
    prompt, completion = record["prompt"], record["completion"]
    where = f"--data_path {path}: record {i}"
    if method == "channel":
        if "{label_word}" not in prompt or "{text}" not in completion:
            raise ClassificationError(
                f"{where} is not a channel input (prompt needs {{label_word}}, completion {{text}}); "
                "make one with run_preprocess.py --method channel"
            )
    else:
        if "{text}" not in prompt or "{label_word}" not in completion:
            raise ClassificationError(
                f"{where} is not a direct input (prompt needs {{text}}, completion {{label_word}}); "
                "make one with run_preprocess.py --method direct"
            )


def validate_records(data: Any, method: str, path: str) -> List[Dict[str, Any]]:
    """Check the records of an input file; fill in ``index`` (position) where it is missing."""
    flag = "--direct_input_path" if method == "calibrate" else "--data_path"
    if not isinstance(data, list):
        raise ClassificationError(f"{flag} {path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise ClassificationError(f"{flag} {path}: no records")
    records: List[Dict[str, Any]] = []
    first_words: Optional[List[str]] = None
    seen: Dict[int, int] = {}
    for i, rec in enumerate(data):
        where = f"{flag} {path}: record {i}"
        if not isinstance(rec, dict):
            raise ClassificationError(f"{where} is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise ClassificationError(f"{where} lacks key(s) {', '.join(missing)}")
        for key in ("prompt", "completion", "text", "ground_truth"):
            if not isinstance(rec[key], str):
                raise ClassificationError(f"{where}: {key} must be a string")
        words = rec["label_words"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ClassificationError(f"{where}: label_words must be a list of strings")
        if not words:
            raise ClassificationError(f"{where}: label_words is empty")
        if len(set(words)) != len(words):
            raise ClassificationError(f"{where}: label_words has duplicates: {words}")
        if not all(w.strip() for w in words):
            raise ClassificationError(f"{where}: label_words has an empty word: {words}")
        if rec["ground_truth"] not in words:
            raise ClassificationError(f"{where}: ground_truth {rec['ground_truth']!r} is not among label_words {words}")
        if first_words is None:
            first_words = words
        elif words != first_words:
            raise ClassificationError(
                f"{where}: label_words {words} differ from record 0's {first_words}; one file needs one label set"
            )
        index = rec.get("index", i)
        if not isinstance(index, int) or isinstance(index, bool):
            raise ClassificationError(f"{where}: index must be an integer")
        if index in seen:
            raise ClassificationError(
                f"{where}: index {index} is also record {seen[index]}'s; every record needs its own index"
            )
        seen[index] = i
        _check_template(rec, i, method, path)
        records.append({**rec, "index": index})
    return records


def load_records(path: str, method: str) -> List[Dict[str, Any]]:
    """Read and check the input records for ``method``."""
    flag = "--direct_input_path" if method == "calibrate" else "--data_path"
    return validate_records(read_json(path, "input", flag), method, path)


def load_direct_outputs(path: str, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Read a direct output file and check that it matches ``records`` one to one."""
    data = read_json(path, "direct output", "--direct_output_path")
    hint = "; rerun run_evaluate_direct_llama.py on the same --data_path"
    if not isinstance(data, list):
        raise ClassificationError(f"--direct_output_path {path}: expected a JSON list of records{hint}")
    if len(data) != len(records):
        raise ClassificationError(
            f"--direct_output_path {path} has {len(data)} records but the inputs have {len(records)}{hint}"
        )
    n_labels = len(records[0]["label_words"])
    for i, (out, rec) in enumerate(zip(data, records)):
        where = f"--direct_output_path {path}: record {i}"
        if not isinstance(out, dict) or not isinstance(out.get("log_probs"), list):
            raise ClassificationError(f"{where} has no log_probs list{hint}")
        if len(out["log_probs"]) != n_labels or not all(isinstance(x, (int, float)) for x in out["log_probs"]):
            raise ClassificationError(f"{where}: log_probs needs {n_labels} numbers{hint}")
        if not all(math.isfinite(x) for x in out["log_probs"]):
            raise ClassificationError(
                f"{where} has a non-finite log-prob {out['log_probs']}; rerun the direct method with "
                "--dtype bf16 or --dtype fp32"
            )
        if out.get("index", rec["index"]) != rec["index"]:
            raise ClassificationError(f"{where} has index {out.get('index')} but the input has {rec['index']}{hint}")
    return data


def check_foreign_outputs(path: str, records: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]],
                          inputs: str) -> None:
    """Direct outputs without a metrics file (the original scripts write ``prediction``,
    ``log_probs``, ``correct``): each prediction must be the label word of its largest log-prob
    (the same label words, in order) and each ``correct`` must match the record's ground truth (the
    same records, in order).  ``load_direct_outputs`` has checked the count and log-prob lengths."""
    words = list(records[0]["label_words"])
    wrong_word = wrong_truth = 0
    first: Optional[int] = None
    for i, (out, rec) in enumerate(zip(outputs, records)):
        lps = out["log_probs"]
        predicted = words[max(range(len(lps)), key=lambda j: lps[j])]
        bad_word = "prediction" in out and out["prediction"] != predicted
        truth = out.get("ground_truth", rec["ground_truth"])
        prediction = out.get("prediction", predicted)
        bad_truth = truth != rec["ground_truth"] or ("correct" in out and out["correct"] != (prediction == truth))
        wrong_word += bad_word
        wrong_truth += bad_truth
        if (bad_word or bad_truth) and first is None:
            first = i
    if wrong_word:
        raise ClassificationError(
            f"--direct_output_path {path}: {wrong_word} prediction(s) (first: record {first}) are not the label word "
            f"of the largest log-prob among {words}: it was scored with other label words than {inputs}"
        )
    if wrong_truth:
        raise ClassificationError(
            f"--direct_output_path {path}: {wrong_truth} record(s) (first: record {first}) disagree with the ground "
            f"truth of {inputs}: it holds other records, or the same in another order"
        )


def build_outputs(
    records: Sequence[Dict[str, Any]], results: Dict[int, Dict[str, Any]], method: str
) -> List[Dict[str, Any]]:
    """One output record per input record, in input order (``results``: by record position); calibrate
    adds the original's ``score``, generate the ``generation``."""
    outputs = []
    for pos, rec in enumerate(records):
        r = results[pos]
        out = {
            "index": rec["index"],
            "ground_truth": rec["ground_truth"],
            "prediction": r["prediction"],
            "correct": r["prediction"] == rec["ground_truth"],
            "log_probs": r.get("log_probs"),
            "shortened": bool(r.get("shortened", False)),
        }
        if method == "generate":
            out["generation"] = r.get("generation", "")
        if method == "calibrate":  # the original's calibrate output field (classification.methods.contextual_scores)
            out["score"] = r.get("score")
        outputs.append(out)
    return outputs
