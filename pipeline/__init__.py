"""EnECG: run frozen ECG backbones once, cache their embeddings, ensemble them cheaply."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("enecg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
