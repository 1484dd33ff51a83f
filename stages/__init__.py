"""One module per DVC stage: read params, call the pipeline library, write the stage's artifacts."""
