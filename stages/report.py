"""`enecg report`: one self-contained HTML page with the whole result of the current run -> report.html
(metrics with intervals and paired differences, pictures, gate weights per task; prepare's QC summary; the
backbones' checkpoint hashes and provenance). See pipeline.html_report."""

from pathlib import Path

from pipeline.html_report import write_report
from pipeline.layout import REPORT


def run(params: dict, out: Path = REPORT) -> Path:
    return write_report(params, out)
