"""Start-up cost of an evaluate run: process start to the first scored batch, and to exit.

    python benchmarks/bench_startup.py --n_examples 1 --repeats 5

Runs ``run_evaluate_direct_llama.py`` on the first ``n_examples`` records of ``data_path`` in a
fresh process ``repeats`` times (warm file cache: the first run is dropped) and prints the median
of: process start -> first ``loglikelihood`` batch (imports, input and model hashing, loading, the
demonstration prefix), and process start -> exit.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]

# Runs the script as ``python script.py`` would, noting when the scorer gets its first batch.
PROBE = """
import runpy, sys, time
t0 = float(sys.argv[1])
from classification.backend import scoring
loglikelihood = scoring.LlamaLM.loglikelihood
def first_batch(self, requests):
    if not getattr(first_batch, "seen", False):
        first_batch.seen = True
        print(f"FIRST_BATCH {time.time() - t0:.3f}", flush=True)
    return loglikelihood(self, requests)
scoring.LlamaLM.loglikelihood = first_batch
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def main(data_path: str = "samples/inputs_direct_ag_news.json", n_examples: int = 1, repeats: int = 5) -> None:
    """Time ``repeats`` fresh runs of the direct script on ``n_examples`` records (medians).

    Args:
        data_path: direct input records (``make demo`` writes the default).
        n_examples: how many of its records each run scores.
        repeats: runs timed after one untimed warm-up run.
    """
    records = json.loads((ROOT / data_path).read_text(encoding="utf-8"))[:n_examples]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.json"
        inputs.write_text(json.dumps(records), encoding="utf-8")
        first, total = [], []
        for i in range(repeats + 1):
            output = Path(tmp) / f"out{i}.json"
            start = time.time()
            proc = subprocess.run(
                [sys.executable, "-c", PROBE, str(start), str(ROOT / "run_evaluate_direct_llama.py"),
                 "--data_path", str(inputs), "--output_path", str(output)],
                cwd=ROOT, capture_output=True, text=True, env=dict(os.environ),
            )
            elapsed = time.time() - start
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            if i:  # the first run warms the file cache
                total.append(elapsed)
                first.append(float(next(line.split()[1] for line in proc.stdout.splitlines()
                                         if line.startswith("FIRST_BATCH"))))
    print(f"{n_examples} example(s), median of {repeats} runs: first scored batch after "
          f"{statistics.median(first):.2f} s, exit after {statistics.median(total):.2f} s "
          f"(min {min(first):.2f} / {min(total):.2f} s)")


if __name__ == "__main__":
    fire.Fire(main)
