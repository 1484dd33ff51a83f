"""Stage `extract`: one frozen backbone over the corpus -> embeddings/NAME.zarr (on params' `cluster`, if any)."""

from pipeline.cluster import cluster_client
from pipeline.layout import CORPUS, embeddings_path
from pipeline.stage_one.extract import extract_embeddings


def run(params: dict, model: str, stop_after_chunks: int | None = None) -> dict:
    settings = params["extract"]
    with cluster_client(params.get("cluster")) as client:
        return extract_embeddings(
            model,
            CORPUS,
            embeddings_path(model),
            batch_size=int(settings["batch_size"]),
            chunk_records=int(settings["chunk_records"]),
            device=str(settings.get("device", "auto")),
            stop_after_chunks=stop_after_chunks,
            client=client,
        )
