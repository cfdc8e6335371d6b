"""The README's Python API example, run exactly as written (so the README cannot drift), and its
results checked against the file-based run of the scripts' evaluate on the same records."""

from __future__ import annotations

import contextlib
import io
import json
import re

from classification.run.runner import evaluate

TOLERANCE = 1e-5  # in-memory and file-based runs batch the same requests differently


def readme_example(root) -> str:
    """The first python block after the "## Python API" heading of README.md."""
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Python API\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example(root, shared_data, default_model_dir, tmp_path, monkeypatch):
    assert (default_model_dir / "135M").resolve() == (root / "checkpoints/smollm2/135M").resolve()
    monkeypatch.chdir(root)  # the example's paths are relative to the checkout
    printed = io.StringIO()
    names: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(root), "README.md", "exec"), names)
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(("direct ", "calibrate "))]
    assert [line.split()[0] for line in lines] == ["direct", "calibrate"]
    assert all(0.0 <= float(line.split()[1]) <= 1.0 for line in lines)

    lm, records, outputs, calibrated = names["lm"], names["records"], names["outputs"], names["calibrated"]
    assert len(records) == len(outputs) == len(calibrated) == 8
    data = tmp_path / "inputs.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    evaluate("direct", str(data), str(tmp_path / "direct.json"), lm=lm)
    evaluate("calibrate", str(data), str(tmp_path / "na.json"), lm=lm, direct_output_path=str(tmp_path / "direct.json"))
    for in_memory, name in ((outputs, "direct.json"), (calibrated, "na.json")):
        on_file = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        assert [o["index"] for o in in_memory] == [o["index"] for o in on_file]
        assert [o["prediction"] for o in in_memory] == [o["prediction"] for o in on_file]
        for a, b in zip(in_memory, on_file):
            assert set(a) == set(b)
            assert max(abs(x - y) for x, y in zip(a["log_probs"], b["log_probs"])) <= TOLERANCE
