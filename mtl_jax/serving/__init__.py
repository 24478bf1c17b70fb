"""Using a trained model: export it (``export``), score raw rows with it (``Scorer``)."""

from mtl_jax.serving.export import ExportError, export_trainer, export_workdir
from mtl_jax.serving.rows import RequestError
from mtl_jax.serving.scorer import ModelDirError, Scorer

__all__ = [
    "ExportError",
    "ModelDirError",
    "RequestError",
    "Scorer",
    "export_trainer",
    "export_workdir",
]
