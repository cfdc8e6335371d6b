"""Golden runs: a few representative runs of the scripts on the default model must give what they gave
when ``tests/golden/runs.json`` was written (input records byte for byte, log-probs within 1e-5).

The records hold dataset text, so only their sha256 digests are stored; outputs are stored as
numbers (log-probs) and label words (predictions); generations by digest.  Regenerate the file
(only for an intended change of results) with ``GOLDEN_WRITE=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import fire
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "runs.json"
TOLERANCE = 1e-5
CPU = ["--device", "cpu", "--dtype", "fp32"]

# (name, script, flags): {data} is the offline data folder, {work} the run folder.
PREPROCESS = [
    ("inputs_direct_ag_news.json", "run_preprocess_direct_ag_news.py",
     ["--data_dir", "{data}/ag_news", "--n_sample", "8", "--n_anchor", "2"]),
    ("inputs_channel_ag_news.json", "run_preprocess_channel_ag_news.py", ["--data_dir", "{data}/ag_news", "--n_sample", "8"]),
    ("inputs_direct_sst2.json", "run_preprocess.py",
     ["--preset", "sst2", "--data_dir", "{data}/sst2", "--demos", "bm25", "--k", "1", "--n_sample", "4"]),
]
EVALUATE = [
    ("direct", "run_evaluate_direct_llama.py", ["--data_path", "{work}/inputs_direct_ag_news.json", "--save_hidden"]),
    ("channel", "run_evaluate_channel_llama.py", ["--data_path", "{work}/inputs_channel_ag_news.json"]),
    ("generate", "run_evaluate_generate_llama.py", ["--data_path", "{work}/inputs_direct_ag_news.json"]),
    ("direct_sst2_bm25", "run_evaluate_direct_llama.py", ["--data_path", "{work}/inputs_direct_sst2.json"]),
] + [
    (f"calibrate_{c}", "run_evaluate_direct_calibrate_llama.py",
     ["--direct_input_path", "{work}/inputs_direct_ag_news.json", "--direct_output_path", "{work}/outputs_direct.json",
      "--calibration", c])
    for c in ("na", "hidden", "knn")
]


def load_script(root: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name[:-3], root / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def produce(root: Path, data: Path, model_dir: Path, work: Path) -> Dict[str, Any]:
    """Run every golden run in ``work``; the digests of the records and the outputs as numbers."""
    model = ["--ckpt_dir", str(model_dir / "135M"), "--tokenizer_path", str(model_dir / "tokenizer.json")]
    fill = {"data": str(data), "work": str(work)}
    records: Dict[str, str] = {}
    for name, script, flags in PREPROCESS:
        args = [f.format(**fill) for f in flags] + ["--data_path", str(work / name)]
        fire.Fire(load_script(root, script).main, command=args + (model if script == "run_preprocess.py" else []))
        records[name] = sha256(work / name)
        anchors = (work / name).with_suffix(".anchors.json")
        if anchors.is_file():
            records[anchors.name] = sha256(anchors)
    outputs: Dict[str, Any] = {}
    for name, script, flags in EVALUATE:
        out = work / f"outputs_{name}.json"
        fire.Fire(load_script(root, script).main,
                  command=[f.format(**fill) for f in flags] + ["--output_path", str(out)] + model + CPU)
        rows: List[Dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
        entry: Dict[str, Any] = {"index": [r["index"] for r in rows], "prediction": [r["prediction"] for r in rows],
                                 "log_probs": [r["log_probs"] for r in rows]}
        if name == "generate":
            generations = json.dumps([r["generation"] for r in rows], ensure_ascii=False)
            entry["generations_sha256"] = hashlib.sha256(generations.encode("utf-8")).hexdigest()
        outputs[name] = entry
    return {"records_sha256": records, "outputs": outputs}


@pytest.mark.slow
def test_golden_runs(root, shared_data, default_model_dir, tmp_path):
    got = produce(root, shared_data, default_model_dir, tmp_path)
    if os.environ.get("GOLDEN_WRITE") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert got["records_sha256"] == want["records_sha256"]
    assert sorted(got["outputs"]) == sorted(want["outputs"])
    for name, expected in want["outputs"].items():
        run = got["outputs"][name]
        assert run["index"] == expected["index"], name
        assert run["prediction"] == expected["prediction"], name
        assert run.get("generations_sha256") == expected.get("generations_sha256"), name
        for have, should in zip(run["log_probs"], expected["log_probs"]):
            if should is None:
                assert have is None, name
                continue
            assert len(have) == len(should) and max(abs(a - b) for a, b in zip(have, should)) <= TOLERANCE, name


def test_golden_file_holds_no_text():
    """Only digests, indices, label words and numbers: no dataset text is committed."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    words = {"World", "Sports", "Business", "Science and technology", "Negative", "Positive", "none"}
    for name, digest in golden["records_sha256"].items():
        assert len(digest) == 64 and int(digest, 16) >= 0, name
    for run in golden["outputs"].values():
        assert set(run["prediction"]) <= words
        assert all(isinstance(i, int) for i in run["index"])
        assert all(lp is None or all(isinstance(x, float) for x in lp) for lp in run["log_probs"])
