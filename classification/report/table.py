"""A results table (method, n, accuracy with its 95 % Wilson interval, macro-F1, time) from ``*.metrics.json`` files.

    python -m classification.report.table samples/outputs_*_ag_news.metrics.json
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from classification.calibrations import CALIBRATIONS
from classification.errors import ClassificationError, json_cause

CALIBRATION_ORDER = tuple(CALIBRATIONS)  # one list: the registered calibrations, in order
# Display names, in table order: calibrations are post hoc re-scorings of the direct run.
LABEL_ORDER = ("direct",) + tuple(f"direct+{c}" for c in CALIBRATION_ORDER) + ("channel", "generate")


def method_label(metrics: Dict[str, Any]) -> str:
    """"direct", "direct+na", ..., "channel", "generate" for a metrics dict."""
    method = str(metrics.get("method", "?"))
    if method == "calibrate":
        return f"direct+{metrics.get('calibration') or 'na'}"
    return method


def label_rank(label: str) -> int:
    return LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER)


def load_metrics(paths: Sequence[str]) -> List[Dict[str, Any]]:
    """Read metrics files (one-line error for a missing or broken one), in LABEL_ORDER."""
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                m = json.load(f)
        except OSError as e:
            raise ClassificationError(f"cannot read metrics file {path}: {e.strerror or e}") from None
        except RecursionError:
            raise ClassificationError(f"metrics file {path} is not valid JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
            raise ClassificationError(f"metrics file {path} is not valid JSON: {json_cause(e)}") from None
        if not isinstance(m, dict) or "accuracy" not in m:
            raise ClassificationError(f"{path} is not a metrics file (no accuracy)")
        rows.append(m)
    return sorted(rows, key=lambda m: label_rank(method_label(m)))


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table, one row per metrics dict."""
    lines = ["| method | n | accuracy | 95% CI | macro-F1 | time (s) |", "|---|---:|---:|---|---:|---:|"]
    for m in rows:
        time_s: Optional[float] = m.get("wall_time_s")
        ci = m.get("accuracy_ci95")
        lines.append(
            f"| {method_label(m)} | {m.get('n', '?')} | {m['accuracy']:.4f} | "
            f"{'-' if not ci else f'{ci[0]:.3f}-{ci[1]:.3f}'} | "
            f"{m.get('macro_f1', float('nan')):.4f} | {'-' if time_s is None else f'{time_s:.1f}'} |"
        )
    return "\n".join(lines)


def print_table(*paths: str) -> str:
    """Print (and return) the table of the given metrics files."""
    if not paths:
        raise ClassificationError("give one or more *.metrics.json files")
    table = format_table(load_metrics(paths))
    print(table)
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        print_table(*args)
    except ClassificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
