"""The project's own error types.

Every error a user can cause (a bad manifest line, an unreadable record, a checkpoint that does not fit)
is raised as an `EnECGError` whose message says what was wrong, where, and what to do. The CLI prints
these without a traceback; anything else is a bug in the project.
"""


class EnECGError(Exception):
    """A problem the user can act on."""


class ManifestError(EnECGError):
    """A manifest or params file is malformed (the message names file, line and field)."""


class RecordError(EnECGError):
    """A WFDB record cannot be used (the message names the record and the reason)."""


class CheckpointError(EnECGError):
    """A backbone checkpoint is missing, unreadable or does not match the architecture."""


class StoreError(EnECGError):
    """A Zarr store or artifact is missing, incomplete, or was produced from other inputs."""
