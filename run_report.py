"""Turn metrics/output files into a Markdown report with PNG plots (classification.report.markdown)."""

import fire

from classification.cli import cli
from classification.report.markdown import build_report


@cli
def main(
    inputs: str | list[str] = "outputs", out_dir: str = "outputs/report", title: str = "Classification report"
) -> None:
    """Table (dataset x method x k, mean ± std over seeds), confusion matrices, reliability and accuracy plots.

    Args:
        inputs: *.metrics.json files, output files, folders (searched for *.metrics.json) or globs, e.g.
            --inputs='[outputs/ag_news/k1, outputs/sst2/k1]'.
        out_dir: folder for report.md and img/*.png (plots hold numbers and label words, no dataset text).
        title: the report's heading.
    """
    build_report(inputs, out_dir, title)


if __name__ == "__main__":
    fire.Fire(main)
