"""Datasets from your own files: CSV or Parquet, a column schema in the config.

``configs/files.py`` is the documented template. The ``data`` section names the files (a
path, a glob, or a comma-separated list of either, per split; or one source and a split
rule) and how to read them; ``data.labels`` says how each task's label comes from the
columns; the top-level ``features`` section says how each input feature is encoded:

- ``categorical``: a vocabulary from the train split (ids seen at least ``min_count`` times
  get rows 1..V, in order of first appearance; row 0 is the out-of-vocabulary row that
  unseen, rare and missing values share), or with ``hash_buckets = N`` raw ids hashed
  into N buckets plus the same row 0 (mtl_jax/data/hashing.py);
- ``dense``: a number, normalised with train statistics (``none``, ``standard``,
  ``log1p``); missing values become the train mean (``missing="mean"``), 0 (``"zero"``) or
  an error (``"error"``).

Every encoder is fitted on the train split only and saved with the run
(``FileEncoding.save``), so serving encodes raw rows exactly as training did. Bad input is
a ``DataFormatError`` naming the file, its line and the column.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax.data.hashing import HashedIds
from mtl_jax.data.schema import FeatureSpec, MultiTaskDataset, Split, random_split
from mtl_jax.errors import ConfigError, DataFormatError
from mtl_jax.tasks import TaskSpec

log = logging.getLogger("mtl_jax")

FEATURE_KINDS = ("categorical", "dense")
NORMALIZATIONS = ("none", "standard", "log1p")
MISSING_POLICIES = ("mean", "zero", "error")
LABEL_KINDS = ("binary", "regression", "multiclass")
SPLIT_RULES = ("random", "time", "user")
FORMATS = ("auto", "csv", "parquet")
DEFAULT_MISSING = ("", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Table:
    """Columns of one split as read (numpy arrays: numbers, or strings with None for
    missing values) and where each row came from, to name it in errors."""

    columns: dict[str, np.ndarray]
    files: list[str]
    file_index: np.ndarray  # (rows,) index into files
    line: np.ndarray  # (rows,) 1-based line in its file (Parquet: row number)

    def __len__(self) -> int:
        return len(self.file_index)

    def where(self, row: int) -> str:
        return f"{self.files[self.file_index[row]]}, line {self.line[row]}"

    def take(self, index: np.ndarray) -> Table:
        return Table(
            {k: v[index] for k, v in self.columns.items()},
            self.files,
            self.file_index[index],
            self.line[index],
        )


def expand_paths(spec: str, what: str, data_dir: str = "", hint: str = "") -> list[str]:
    """Files of a comma-separated list of paths and globs (relative ones under ``data_dir``
    when it is set), each glob's matches sorted. ``hint`` ends the error when a file is
    missing (what the data set's files are and where they come from)."""
    out = []
    tail = f"; {hint}" if hint else ""
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if data_dir and not pathlib.Path(part).is_absolute():
            part = str(pathlib.Path(data_dir) / part)
        if glob.has_magic(part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise DataFormatError(f"{what}: the glob {part!r} matches no file{tail}")
            out.extend(matches)
        elif not pathlib.Path(part).is_file():
            raise DataFormatError(f"{what}: no such file {part!r}{tail}")
        else:
            out.append(part)
    if not out:
        raise DataFormatError(f"{what}: no file given{tail}")
    return out


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower()
    if name.endswith((".parquet", ".pq", ".parquet.brotli", ".parquet.snappy")):
        return "parquet"
    if name.endswith((".csv", ".tsv", ".txt", ".data", ".test", ".csv.gz", ".sample")):
        return "csv"
    raise DataFormatError(
        f"{path}: cannot tell the format from the name; set data.format to csv or parquet"
    )


def _to_numpy(column: Any, missing: frozenset[str]) -> np.ndarray:
    """A pyarrow column as numpy: numbers as float64 (nulls NaN) or int64 (no nulls),
    anything else as an object array of stripped strings, None where missing."""
    import pyarrow as pa

    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy().astype(np.int64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_boolean(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    values = column.cast(pa.string()).to_pylist()
    out = np.empty(len(values), object)
    for i, v in enumerate(values):
        v = None if v is None else v.strip()
        out[i] = None if v is None or v in missing else v
    return out


def read_file(path: str, options: Mapping[str, Any]) -> Table:
    """One CSV or Parquet file as a ``Table``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = _format_of(path, options.get("format", "auto"))
    missing = frozenset(options.get("missing_values", DEFAULT_MISSING))
    if pathlib.Path(path).stat().st_size == 0:
        raise DataFormatError(f"{path}: the file is empty")
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
            first_line = 1
        else:
            names = list(options.get("columns", ()))
            header = options.get("header", True)
            if not header and names:
                with open(path, errors="replace") as f:
                    fields = len(f.readline().split(options.get("delimiter", ",")))
                if fields == len(names) + 1:  # a copy with a leading row id (e.g. DeepCTR's)
                    names = ["row_id", *names]
            read = pacsv.ReadOptions(
                column_names=None if header else (names or None),
                autogenerate_column_names=not header and not names,
            )
            parse = pacsv.ParseOptions(delimiter=options.get("delimiter", ","))
            convert = pacsv.ConvertOptions(
                null_values=sorted(missing),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            )
            table = pacsv.read_csv(path, read, parse, convert)
            first_line = 2 if header else 1
    except (pa.ArrowInvalid, OSError) as e:
        kind = "Parquet" if fmt == "parquet" else "CSV"
        raise DataFormatError(f"{path}: not readable as {kind}: {str(e).splitlines()[0]}") from e
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: the file has a header but no rows")
    columns = {name: _to_numpy(table.column(name), missing) for name in table.column_names}
    n = table.num_rows
    return Table(columns, [path], np.zeros(n, np.int32), np.arange(n, dtype=np.int64) + first_line)


def read_files(paths: Sequence[str], options: Mapping[str, Any]) -> Table:
    """Several files of one split, which must have the same columns."""
    tables = [read_file(p, options) for p in paths]
    first = tables[0]
    for t in tables[1:]:
        if list(t.columns) != list(first.columns):
            raise DataFormatError(
                f"{t.files[0]}: columns {list(t.columns)} differ from {first.files[0]}'s "
                f"{list(first.columns)}"
            )
    columns = {}
    for name in first.columns:
        parts = [t.columns[name] for t in tables]
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        elif any(p.dtype.kind == "f" for p in parts):
            parts = [p.astype(np.float64) for p in parts]
        columns[name] = np.concatenate(parts)
    file_index = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(tables)])
    return Table(
        columns,
        [t.files[0] for t in tables],
        file_index,
        np.concatenate([t.line for t in tables]),
    )


# --------------------------------------------------------------------------- encoders


def _show(value: Any) -> str:
    """A raw value as the file has it: 7, not np.float64(7.0); strings quoted."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    return repr(value)


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], bool)
    if values.dtype.kind == "f":
        return np.isnan(values)
    return np.zeros(len(values), bool)


def _as_keys(values: np.ndarray) -> np.ndarray:
    """Category values as strings (integers without a trailing .0), None kept."""
    out = np.empty(len(values), object)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[i] = None
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out[i] = str(int(v))
        else:
            out[i] = str(v)
    return out


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Values seen in train at least ``min_count`` times -> rows 1..V; the rest -> 0."""

    values: tuple[str, ...]

    @classmethod
    def fit(cls, train: np.ndarray, min_count: int) -> Vocabulary:
        keys = _as_keys(train)
        present = keys[[k is not None for k in keys]]
        if present.size == 0:
            return cls(())
        uniques, first, counts = np.unique(
            present.astype(str), return_index=True, return_counts=True
        )
        kept = [(f, u) for u, f, c in zip(uniques, first, counts, strict=True) if c >= min_count]
        return cls(tuple(u for _, u in sorted(kept)))

    @property
    def rows(self) -> int:
        return len(self.values) + 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        index = {v: i + 1 for i, v in enumerate(self.values)}
        return np.array([index.get(k, 0) for k in _as_keys(values)], np.int32)


@dataclasses.dataclass(frozen=True)
class DenseStats:
    """A dense column's train statistics and its normalisation."""

    normalize: str
    missing: str
    mean: float
    std: float

    @classmethod
    def fit(cls, train: np.ndarray, normalize: str, missing: str) -> DenseStats:
        x = _transform(train, normalize)
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size else 1.0
        return cls(normalize, missing, mean, std if std > 0 else 1.0)

    def encode(self, values: np.ndarray) -> np.ndarray:
        x = _transform(values, self.normalize)
        fill = {"mean": self.mean, "zero": 0.0, "error": np.nan}[self.missing]
        x = np.where(np.isnan(x), fill, x)
        if self.normalize == "standard":
            x = (x - self.mean) / self.std
        return x.astype(np.float32)[:, None]


def _transform(values: np.ndarray, normalize: str) -> np.ndarray:
    x = values.astype(np.float64)
    if normalize == "log1p":
        x = np.log1p(np.maximum(x, 0.0))
    return x


# --------------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True)
class FileEncoding:
    """Every fitted encoder of a file dataset: what a later step needs to encode raw rows."""

    features: dict[str, Any]  # name -> Vocabulary | HashedIds | DenseStats
    columns: dict[str, str]  # feature name -> source column

    def save(self, directory: str | pathlib.Path) -> None:
        """``features.json`` (vocabularies, statistics) and one ``<name>.hash.npz`` per
        hashed feature."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, enc in self.features.items():
            entry: dict[str, Any] = {"column": self.columns[name]}
            if isinstance(enc, Vocabulary):
                entry.update(kind="categorical", vocabulary=list(enc.values))
            elif isinstance(enc, HashedIds):
                enc.save(directory / f"{name}.hash.npz")
                entry.update(kind="categorical", hash_buckets=enc.buckets)
            else:
                entry.update(kind="dense", **dataclasses.asdict(enc))
            out[name] = entry
        (directory / "features.json").write_text(json.dumps(out, indent=1))


def _column(table: Table, column: str, what: str) -> np.ndarray:
    if column not in table.columns:
        raise DataFormatError(
            f"{table.files[0]}: no column {column!r} (for {what}); columns: {list(table.columns)}"
        )
    return table.columns[column]


def _numbers(table: Table, column: str, what: str) -> np.ndarray:
    """A column as float64 (NaN where missing), or an error naming the first bad value."""
    values = _column(table, column, what)
    if values.dtype != object:
        return values.astype(np.float64)
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise DataFormatError(
                f"{table.where(i)}, column {column!r}: {v!r} is not a number ({what})"
            ) from None
    return out


def _fit_feature(name: str, spec: Mapping[str, Any], train: Table) -> Any:
    kind = spec.get("kind", "categorical")
    column = spec.get("column") or name
    if kind == "categorical":
        values = _column(train, column, f"feature {name!r}")
        if spec.get("hash_buckets") is not None:
            if int(spec["hash_buckets"]) < 1:
                raise ConfigError(
                    f"features.{name}.hash_buckets must be >= 1, got {spec['hash_buckets']} "
                    "(None: a vocabulary from train)"
                )
            present = values[~_missing_mask(values)]
            ids = _as_keys(present).astype(str) if present.dtype == object else present
            return HashedIds.fit(
                ids, int(spec["hash_buckets"]), int(spec.get("min_count", 1)), name
            )
        if int(spec.get("min_count", 1)) < 1:
            raise ConfigError(f"features.{name}.min_count must be >= 1, got {spec['min_count']}")
        return Vocabulary.fit(values, int(spec.get("min_count", 1)))
    if kind == "dense":
        normalize = spec.get("normalize", "none")
        missing = spec.get("missing", "mean")
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"features.{name}.normalize: {normalize!r}; valid: {NORMALIZATIONS}")
        if missing not in MISSING_POLICIES:
            raise ConfigError(f"features.{name}.missing: {missing!r}; valid: {MISSING_POLICIES}")
        return DenseStats.fit(
            _numbers(train, column, f"dense feature {name!r}"), normalize, missing
        )
    raise ConfigError(f"features.{name}.kind: {kind!r}; valid: {FEATURE_KINDS}")


def _encode_feature(name: str, enc: Any, column: str, table: Table) -> np.ndarray:
    if isinstance(enc, DenseStats):
        values = _numbers(table, column, f"dense feature {name!r}")
        if np.isinf(values).any():
            row = int(np.argmax(np.isinf(values)))
            raise DataFormatError(
                f"{table.where(row)}, column {column!r}: {values[row]} is not finite (dense "
                f"feature {name!r})"
            )
        if enc.missing == "error" and np.isnan(values).any():
            row = int(np.argmax(np.isnan(values)))
            raise DataFormatError(
                f"{table.where(row)}, column {column!r}: missing value (features.{name}.missing"
                " is 'error')"
            )
        return enc.encode(values)
    values = _column(table, column, f"feature {name!r}")
    if isinstance(enc, HashedIds):
        missing = _missing_mask(values)
        rows = np.zeros(len(values), np.int32)
        present = values[~missing]
        if present.size:
            ids = _as_keys(present).astype(str) if present.dtype == object else present
            if ids.dtype.kind == "f":
                ids = ids.astype(np.int64)
            rows[~missing] = enc.encode(ids)
        return rows
    return enc.encode(values)


def _label(task: str, spec: Mapping[str, Any], table: Table) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, mask)`` of one task: mask 0 where the label's source is missing."""
    kind = spec.get("kind", "binary")
    column = spec.get("column") or task
    values = _column(table, column, f"task {task!r}")
    missing = _missing_mask(values)
    what = f"task {task!r}"
    mapping = {str(raw): float(label) for raw, label in (spec.get("value_map") or ())}
    if mapping:
        keys = _as_keys(values)
        out = np.zeros(len(values))
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k not in mapping:
                raise DataFormatError(
                    f"{table.where(i)}, column {column!r}: {k!r} is not in data.labels.{task}"
                    f".value_map {sorted(mapping)}"
                )
            out[i] = float(mapping[k])
    elif spec.get("equals", "") not in ("", None):
        target = str(spec["equals"])
        out = np.array([k == target for k in _as_keys(values)], np.float64)
    elif spec.get("threshold") is not None:
        out = (np.nan_to_num(_numbers(table, column, what)) > float(spec["threshold"])).astype(
            float
        )
    else:
        out = np.nan_to_num(_numbers(table, column, what))
    present = ~missing
    if kind == "binary":
        bad = present & ~np.isin(out, (0.0, 1.0))
        allowed = "0 or 1 (derive one with data.labels.<task>.threshold, equals or value_map)"
    elif kind == "multiclass":
        classes = int(spec.get("num_classes", 0))
        bad = present & ~((out >= 0) & (out < classes) & (out == np.round(out)))
        allowed = f"a class id 0..{classes - 1}"
    elif kind == "regression":
        low, high = spec.get("min", None), spec.get("max", None)
        bad = present & ~np.isfinite(out)
        if low is not None:
            bad |= present & (out < float(low))
        if high is not None:
            bad |= present & (out > float(high))
        allowed = f"a number in [{low}, {high}]"
    else:
        raise ConfigError(f"data.labels.{task}.kind: {kind!r}; valid: {LABEL_KINDS}")
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFormatError(
            f"{table.where(row)}, column {column!r}: label {_show(values[row])} of {kind} task "
            f"{task!r} is not {allowed}"
        )
    dtype = np.int32 if kind == "multiclass" else np.float32
    return out.astype(dtype), present.astype(np.float32)


def _split_one_source(table: Table, data: Mapping[str, Any], seed: int) -> list[Table]:
    rule = data.get("split", "random")
    val, test = float(data.get("validation_fraction", 0.1)), float(data.get("test_fraction", 0.1))
    if rule == "random":
        parts = random_split(len(table), val, test, np.random.default_rng(seed))
    elif rule in ("time", "user"):
        column = data.get("split_column", "")
        if not column:
            raise ConfigError(f"data.split={rule!r} needs data.split_column")
        if rule == "time":
            t = _numbers(table, column, "data.split_column")
            order = np.argsort(t, kind="stable")
            n_test, n_val = round(len(t) * test), round(len(t) * val)
            cut_val, cut_test = len(t) - n_test - n_val, len(t) - n_test
            parts = (order[:cut_val], order[cut_val:cut_test], order[cut_test:])
            parts = tuple(np.sort(p) for p in parts)
        else:  # every row of a user in one split
            users = np.unique(
                _as_keys(_column(table, column, "data.split_column")).astype(str),
                return_inverse=True,
            )[1]
            u_train, u_val, u_test = random_split(
                users.max() + 1, val, test, np.random.default_rng(seed)
            )
            which = np.zeros(users.max() + 1, np.int8)
            which[u_val], which[u_test] = 1, 2
            parts = tuple(np.flatnonzero(which[users] == k) for k in range(3))
    else:
        raise ConfigError(f"data.split: {rule!r}; valid: {SPLIT_RULES}")
    return [table.take(p) for p in parts]


def _same_columns(table: Table, train: Table) -> None:
    if list(table.columns) != list(train.columns):
        raise DataFormatError(
            f"{table.files[0]}: columns {list(table.columns)} differ from the train file "
            f"{train.files[0]}'s {list(train.columns)}"
        )


def load_tables(data: Mapping[str, Any], seed: int) -> list[Table]:
    """Train, validation and test tables: from their own files, or one source split by rule
    (validation carved from train with the seed when only train and test are given)."""
    options = dict(data)
    where = (data.get("data_dir", ""), data.get("hint", ""))
    if data.get("file"):
        if any(data.get(s) for s in ("train", "validation", "test")):
            raise ConfigError("set data.file or data.train/validation/test, not both")
        return _split_one_source(
            read_files(expand_paths(data["file"], "data.file", *where), options), data, seed
        )
    if not data.get("train") or not data.get("test"):
        raise ConfigError("data.train and data.test (or data.file) must name files")
    train = read_files(expand_paths(data["train"], "data.train", *where), options)
    test = read_files(expand_paths(data["test"], "data.test", *where), options)
    _same_columns(test, train)
    if data.get("validation"):
        validation = read_files(
            expand_paths(data["validation"], "data.validation", *where), options
        )
        _same_columns(validation, train)
    else:
        fraction = float(data.get("validation_fraction", 0.1))
        keep, held, _ = random_split(len(train), fraction, 0.0, np.random.default_rng(seed))
        train, validation = train.take(keep), train.take(held)
    return [train, validation, test]


def build_file_dataset(
    seed: int, features: Mapping[str, Any] | None = None, **data: Any
) -> MultiTaskDataset:
    """A ``MultiTaskDataset`` (with its ``FileEncoding``) from the files ``data`` names and
    the feature schema ``features``."""
    if not features:
        raise ConfigError("a file dataset needs a features section (see configs/files.py)")
    labels = dict(data.pop("labels", {}) or {})
    if not labels:
        raise ConfigError("data.labels must define at least one task (see configs/files.py)")
    for task, spec in labels.items():
        kind = dict(spec).get("kind", "binary")
        if kind not in LABEL_KINDS:
            raise ConfigError(f"data.labels.{task}.kind: {kind!r}; valid: {LABEL_KINDS}")
        if kind == "multiclass" and int(dict(spec).get("num_classes", 0)) < 2:
            raise ConfigError(f"data.labels.{task}.num_classes must be >= 2 for multiclass")
    tables = load_tables(data, seed)
    train = tables[0]
    encoders = {name: _fit_feature(name, dict(spec), train) for name, spec in features.items()}
    columns = {name: dict(spec).get("column") or name for name, spec in features.items()}
    specs, tasks = [], []
    for name, enc in encoders.items():
        if isinstance(enc, DenseStats):
            specs.append(FeatureSpec(name, 0, dense_dim=1))
        else:
            specs.append(FeatureSpec(name, enc.rows))
            if isinstance(enc, HashedIds) and enc.collisions():
                log.info("feature %s: %d train ids share a hash bucket", name, enc.collisions())
    for task, spec in labels.items():
        spec = dict(spec)
        kind = spec.get("kind", "binary")
        tasks.append(
            TaskSpec(task, kind, int(spec.get("num_classes", 0)) if kind == "multiclass" else 0)
        )
    splits = []
    for split_name, table in zip(("train", "validation", "test"), tables, strict=True):
        if len(table) == 0:
            raise DataFormatError(f"the {split_name} split is empty (files {table.files})")
        feats = {n: _encode_feature(n, e, columns[n], table) for n, e in encoders.items()}
        ys, masks = {}, {}
        for task, spec in labels.items():
            ys[task], masks[task] = _label(task, dict(spec), table)
            if split_name == "train" and not masks[task].any():
                raise DataFormatError(
                    f"task {task!r}: every train row's label (column "
                    f"{dict(spec).get('column') or task!r}) is missing"
                )
        splits.append(Split(feats, ys, masks))
    return MultiTaskDataset(
        name=data.get("dataset_name", "files") or "files",
        features=tuple(specs),
        tasks=tuple(tasks),
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        encoding=FileEncoding(encoders, columns),
    )


def data_config(**overrides: Any) -> Any:
    """A ``data`` section for a file dataset with every reading option at its default (so
    each is on the command line); ``overrides`` set some, ``labels`` among them."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            name="files",
            dataset_name="files",  # the name results.json and reports give the dataset
            data_dir="",  # relative paths below are under it ('' = the working directory)
            hint="",  # appended to "no such file" errors: what the files are, where from
            train="",  # a path, a glob, or a comma-separated list of either
            validation="",  # '' = carved from train with the seed (validation_fraction)
            test="",
            file="",  # or: one source, split by data.split
            split="random",  # random (by seed), time (by split_column), user (by split_column)
            split_column="",
            validation_fraction=0.1,
            test_fraction=0.1,  # with data.file
            format="auto",  # auto (by file suffix), csv, parquet
            delimiter=",",
            header=True,  # CSV: the first line names the columns; else data.columns does
            columns=(),
            missing_values=DEFAULT_MISSING,
            labels=ml_collections.ConfigDict(),
        )
    )
    labels = overrides.pop("labels", {})
    c.update(overrides)
    for task, spec in labels.items():
        c.labels[task] = label_config(**spec)
    return c


def label_config(**spec: Any) -> Any:
    """One task's label: ``kind`` (binary, regression, multiclass), the source ``column``
    (default: the task's name) and at most one derivation: ``threshold`` (label = value >
    threshold), ``equals`` (label = value == equals), ``value_map`` (a map from raw value to
    label). ``num_classes`` for multiclass, ``min``/``max`` bounds for regression. A
    missing source value masks the task for that row."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            kind="binary",
            column="",
            threshold=ml_collections.config_dict.placeholder(float),
            equals="",
            value_map=(),  # ((raw value, label), ...): raw values may hold dots
            num_classes=0,
            min=ml_collections.config_dict.placeholder(float),
            max=ml_collections.config_dict.placeholder(float),
        )
    )
    value_map = spec.pop("value_map", {})
    c.update(spec)
    c.value_map = tuple((str(raw), float(label)) for raw, label in dict(value_map).items())
    return c


def feature_config(**spec: Any) -> Any:
    """One input feature: ``kind`` (categorical, dense), the source ``column`` (default: the
    feature's name); categorical: ``hash_buckets`` (None = a vocabulary) and ``min_count``;
    dense: ``normalize`` (none, standard, log1p) and ``missing`` (mean, zero, error)."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            kind="categorical",
            column="",
            hash_buckets=ml_collections.config_dict.placeholder(int),
            min_count=1,
            normalize="none",
            missing="mean",
        )
    )
    c.update(spec)
    return c
