"""Stage `demo_data`: the embedded default corpus (simulated WFDB records + manifest) in data/demo/.

It writes only to its own folder inside the project, whatever `data.root` says: DVC deletes a stage's outputs
before running it, so an output that could be the user's data root would delete the user's corpus.
"""

from pathlib import Path

from pipeline.layout import DEMO_ROOT
from pipeline.stage_one.demo import make_demo_corpus


def run(params: dict) -> Path:
    demo = params["demo"]
    return make_demo_corpus(
        DEMO_ROOT,
        subjects=int(demo["subjects"]),
        records_per_subject=int(demo["records_per_subject"]),
        seed=int(demo["seed"]),
        workers=int(params["prepare"]["workers"]),
    )
