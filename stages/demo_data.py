"""Stage `demo_data`: the embedded default corpus (simulated WFDB records + manifest)."""

from pathlib import Path

from pipeline.demo import make_demo_corpus


def run(params: dict) -> Path:
    demo = params["demo"]
    return make_demo_corpus(
        Path(params["data"]["root"]),
        subjects=int(demo["subjects"]),
        records_per_subject=int(demo["records_per_subject"]),
        seed=int(demo["seed"]),
        workers=int(params["prepare"]["workers"]),
    )
