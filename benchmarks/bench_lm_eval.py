"""Our whole direct script against lm-evaluation-harness's HF backend, on the same requests.

    python benchmarks/bench_lm_eval.py --n_examples 60

The setup: ``n_examples`` stratified ag_news test examples, the original's prompt (k=1 demonstration
per class, 4 classes), records written with the project's preprocessing, ``--completion_end none``,
fp32 on CPU.  It times:

1. ours: ``run_evaluate_direct_llama.py`` as a subprocess, process start to exit (imports, model
   load and writing the outputs included), ``repeats`` times, and the ``wall_time_s`` of its metrics;
2. lm-evaluation-harness (``lm_eval.models.huggingface.HFLM``, ``batch_size`` 8, float32, cpu) on an
   HF directory converted from the same checkpoint with ``llama.convert``: its model load, and its
   ``loglikelihood`` on exactly the (context, continuation) requests the direct method scores
   (``classification.methods.direct`` builds them), timed around that call only.

It prints both times, their ratio (lm-eval's loglikelihood over our whole script; the target is 10x
or more), the largest difference between our log-probs (the output file's ``log_probs``) and
lm-eval's, and whether every prediction agrees; CPU seconds as well, which a shared machine skews
less.  lm_eval is not a dependency of the project: install it with the project in an environment of
its own (``pip install lm_eval==0.4.13 -e .``) and point ``--python`` at the project's interpreter
for ours; without lm_eval only ours is timed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import fire
import torch

from classification import methods
from classification.cli import cli
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, metrics_path
from classification.records import load_records
from classification.run.preprocess import preprocess
from llama.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ag_news"
LM_EVAL_VERSION = "0.4.13"


class RequestRecorder:
    """A :class:`classification.lm.LanguageModel` that keeps the requests it is asked to score (and
    answers 0.0), so the direct method itself builds them: label words, joining space, completion
    end, test texts shortened to fit ``max_seq_len``."""

    append_eos = False  # --completion_end none / newline: no EOS scored

    def __init__(self, tokenizer_path: str, max_seq_len: int) -> None:
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.max_seq_len = max_seq_len
        self.requests: List[Tuple[str, str]] = []

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        self.requests.extend(requests)
        return [0.0] * len(requests)


def run_ours(python: str, data_path: str, output_path: str, ckpt_dir: str, tokenizer_path: str,
             completion_end: str, max_seq_len: int, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run run_evaluate_direct_llama.py once; seconds from process start to exit, and its outputs."""
    cmd = [python, str(ROOT / "run_evaluate_direct_llama.py"), "--data_path", data_path, "--output_path", output_path,
           "--ckpt_dir", ckpt_dir, "--tokenizer_path", tokenizer_path, "--completion_end", completion_end,
           "--max_seq_len", str(max_seq_len), "--dtype", "fp32", "--device", "cpu"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"run_evaluate_direct_llama.py failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    metrics = json.loads(Path(metrics_path(output_path)).read_text())
    return {"seconds": seconds, "cpu_s": cpu, "wall_time_s": metrics["wall_time_s"], "accuracy": metrics["accuracy"],
            "outputs": json.loads(Path(output_path).read_text())}


def make_hf_dir(ckpt_dir: str, tokenizer_path: str, out: Path) -> Path:
    """The checkpoint converted to an HF directory by the project's converter, plus the tokenizer files."""
    from llama.convert import convert

    convert(ckpt_dir, str(out), to="hf")
    tok = Path(tokenizer_path)
    for name in (tok.name, "tokenizer_config.json"):
        if (tok.parent / name).is_file():
            shutil.copy(tok.parent / name, out / name)
    return out


def run_lm_eval(hf_dir: Path, requests: List[Tuple[str, str]], batch_size: int, add_bos: bool) -> Dict[str, Any]:
    """lm-eval's HFLM on the requests: import, model load and loglikelihood seconds, and the scores."""
    start = time.perf_counter()
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    imported = time.perf_counter()
    lm = HFLM(pretrained=str(hf_dir), backend="causal", batch_size=batch_size, dtype="float32", device="cpu",
              add_bos_token=add_bos)
    loaded = time.perf_counter()
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=req, idx=i) for i, req in enumerate(requests)]
    start_ll, cpu = time.perf_counter(), time.process_time()
    answers = lm.loglikelihood(instances, disable_tqdm=True)
    seconds, cpu = time.perf_counter() - start_ll, time.process_time() - cpu
    return {"import_s": imported - start, "load_s": loaded - imported, "loglikelihood_s": seconds, "cpu_s": cpu,
            "scores": [float(logprob) for logprob, _ in answers]}


def main(
    n_examples: int = 60,
    k: int = 1,
    seed: int = 42,
    data_dir: str = str(DEFAULT_DATA),
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    completion_end: str = "none",
    max_seq_len: int = 2048,
    batch_size: int = 8,
    repeats: int = 3,
    python: Optional[str] = None,
    hf_dir: Optional[str] = None,
    threads: Optional[int] = None,
) -> None:
    """Time our whole direct script and lm-eval's loglikelihood on the same requests; check parity.

    Args:
        n_examples: stratified ag_news test examples.
        k: demonstrations per class (the original's prompt: 1).
        seed: seed of the demonstrations and the sample.
        data_dir: the ag_news folder (train.csv, test.csv).
        ckpt_dir, tokenizer_path: the model (converted to HF for lm-eval).
        completion_end: none or newline (eos adds a token lm-eval does not score).
        max_seq_len: ours' --max_seq_len (test texts are shortened to fit, for both).
        batch_size: lm-eval's batch size.
        repeats: runs of our script (each a fresh process and output file); the median is compared.
        python: interpreter for our script (default: this one).
        hf_dir: an HF directory of the same checkpoint to use instead of converting one.
        threads: torch threads for both (OMP_NUM_THREADS for our script; default: torch's, one per core).
    """
    if completion_end == "eos":
        raise SystemExit("--completion_end eos scores EOS after the label, which lm-eval's requests cannot: use none")
    # Absolute paths: our script runs from the checkout's root, the rest from here.
    python = os.path.abspath(python) if python else sys.executable
    ckpt_dir, tokenizer_path = os.path.abspath(ckpt_dir), os.path.abspath(tokenizer_path)
    if threads:
        torch.set_num_threads(threads)
    have_lm_eval = importlib.util.find_spec("lm_eval") is not None
    if not have_lm_eval:
        print(f"lm_eval is not importable: `pip install lm_eval=={LM_EVAL_VERSION}` (in an environment of its own) "
              "to compare with lm-evaluation-harness; timing ours only")
    print(f"{n_examples} ag_news test examples, k={k}, seed {seed}, --completion_end {completion_end}, fp32, CPU "
          f"({torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory(prefix="bench_lm_eval_") as tmp:
        data_path = str(Path(tmp) / "inputs_direct.json")
        preprocess("direct", data_path, sample=True, k=k, seed=seed, data_dir=data_dir, n_sample=n_examples)
        records = load_records(data_path, "direct")
        recorder = RequestRecorder(tokenizer_path, max_seq_len)
        methods.direct(recorder, records, completion_end)
        requests = recorder.requests
        n_tokens = sum(len(recorder.tokenizer.encode(c + x, bos=bool(recorder.tokenizer.add_bos), eos=False))
                       for c, x in requests)
        print(f"requests: {len(requests)} ({len(records)} records x {len(records[0]['label_words'])} labels), "
              f"{n_tokens:,} tokens as full sequences")

        runs = [run_ours(python, data_path, str(Path(tmp) / f"outputs_direct_{i}.json"), ckpt_dir, tokenizer_path,
                         completion_end, max_seq_len, threads) for i in range(max(1, repeats))]
        ours = runs[0]
        whole = statistics.median(r["seconds"] for r in runs)
        whole_cpu = statistics.median(r["cpu_s"] for r in runs)
        inner = statistics.median(r["wall_time_s"] for r in runs)
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"ours, run_evaluate_direct_llama.py: whole script {whole:.2f} s (median of {each}; CPU "
              f"{whole_cpu:.1f} s), wall_time_s in its metrics {inner:.2f} s, accuracy {ours['accuracy']:.4f}")
        if not have_lm_eval:
            return

        if hf_dir is None:
            start = time.perf_counter()
            hf_path = make_hf_dir(ckpt_dir, tokenizer_path, Path(tmp) / "hf")
            print(f"HF directory converted with llama.convert in {time.perf_counter() - start:.1f} s")
        else:
            hf_path = Path(hf_dir)
        theirs = run_lm_eval(hf_path, requests, batch_size, bool(recorder.tokenizer.add_bos))
        print(f"lm-eval {LM_EVAL_VERSION} HFLM (batch_size {batch_size}): import {theirs['import_s']:.1f} s, "
              f"model load {theirs['load_s']:.1f} s, loglikelihood {theirs['loglikelihood_s']:.2f} s "
              f"(CPU {theirs['cpu_s']:.1f} s)")

    n_labels = [len(r["label_words"]) for r in records]
    ours_lp = [lp for out in ours["outputs"] for lp in out["log_probs"]]
    if len(ours_lp) != len(theirs["scores"]):
        raise SystemExit(f"ours has {len(ours_lp)} log-probs, lm-eval {len(theirs['scores'])}")
    delta = max(abs(a - b) for a, b in zip(ours_lp, theirs["scores"]))
    same, start = True, 0
    for out, rec, n in zip(ours["outputs"], records, n_labels):
        same &= rec["label_words"][methods.argmax(theirs["scores"][start:start + n])] == out["prediction"]
        start += n
    ratio, cpu_ratio = theirs["loglikelihood_s"] / whole, theirs["cpu_s"] / whole_cpu
    same_text = "yes" if same else "no"
    print(f"ratio: lm-eval loglikelihood / our whole script = {ratio:.1f}x (target >= 10x; in CPU seconds "
          f"{cpu_ratio:.1f}x); max |Δ log-prob| {delta:.2e}; same predictions: {same_text}")
    print("| ours whole script s | ours wall_time_s | lm-eval load s | lm-eval loglikelihood s | ratio | ratio in CPU s "
          "| max abs Δ log-prob | same predictions |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {whole:.2f} | {inner:.2f} | {theirs['load_s']:.1f} | {theirs['loglikelihood_s']:.1f} | {ratio:.1f}x | "
          f"{cpu_ratio:.1f}x | {delta:.2e} | {same_text} |")


if __name__ == "__main__":
    fire.Fire(cli(main))
