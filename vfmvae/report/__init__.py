"""A run report: one self-contained HTML page of a training run (or of every run under a folder).

    python -m vfmvae.report RUN_DIR [--out DIR]      # -> DIR/report.html (default RUN_DIR/report.html)

    from vfmvae.report import write_report
    write_report("outputs/demo")                    # the demo's runs, one section each

Reads TensorBoard event files (or a CSVLogger ``metrics.csv``), the resolved ``config.yaml`` and JSON metric
records; needs matplotlib and tensorboard, nothing else, and no network. docs/report.md describes the page.
Plain Python: nothing here imports Lightning.
"""

from vfmvae.report.report import REPORT_NAME, NoRunsError, render_report, write_report
from vfmvae.report.runs import Run, find_runs, load_run

__all__ = ["write_report", "render_report", "NoRunsError", "REPORT_NAME", "Run", "find_runs", "load_run"]
