"""Stage `prepare`: manifest -> corpus.zarr, with a QC summary table."""

from pathlib import Path

from pipeline.cluster import cluster_client
from pipeline.layout import CORPUS
from pipeline.report import show_table
from pipeline.stage_one.corpus import prepare_corpus
from pipeline.stage_one.signals import QCSettings


def run(params: dict, strict: bool = False) -> dict:
    settings = params["prepare"]
    with cluster_client(params.get("cluster")) as client:
        summary = prepare_corpus(
            Path(params["data"]["manifest"]),
            Path(params["data"]["root"]),
            CORPUS,
            QCSettings(
                sampling_rate=int(settings["sampling_rate"]),
                seconds=float(settings["seconds"]),
                min_seconds=float(settings["min_seconds"]),
                flat_threshold_mv=float(settings["flat_threshold_mv"]),
            ),
            chunk_records=int(settings["chunk_records"]),
            workers=int(settings["workers"]),
            scheduler=str(settings["scheduler"]),
            strict=strict,
            client=client,
        )
    rows = [["records in manifest", summary["records"]], ["kept", summary["kept"]]]
    rows += [[f"excluded: {reason}", count] for reason, count in sorted(summary["excluded"].items())]
    show_table(f"prepare: {CORPUS}", ["", "records"], rows)
    return summary
