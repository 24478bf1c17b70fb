"""MovieLens-100K: fetch (verified by sha256), parse, and split exactly as our benchmarks do.

Sources, in order: a directory given by the caller; the cache (``$MTL_JAX_DATA``, default
``~/.cache/mtl_jax``); the official GroupLens ``ml-100k.zip``; and, where that host is not
reachable, the identical data shipped inside the RecBole 1.2.1 wheel on the Python package
index (RecBole's tab-separated "atomic files" with typed headers). Both layouts parse into
the same tables. Nothing here is ever committed to the repository.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

import numpy as np

from mtl_jax import paths
from mtl_jax.data.fetch import FetchError
from mtl_jax.data.schema import Catalogue, FeatureSpec, MultiTaskDataset, Split, hold_out_items
from mtl_jax.errors import DataFormatError
from mtl_jax.tasks import TaskSpec

log = logging.getLogger("mtl_jax")

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_FILES = ("u.data", "u.user", "u.item")
RECBOLE_VERSION = "1.2.1"
RECBOLE_FILES = {  # file -> sha256 of the copy inside the recbole 1.2.1 wheel
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# GroupLens publishes an md5 for the archive (no sha256); the RecBole copies carry sha256s.
GROUPLENS_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """The three MovieLens-100K tables as columns. Ids are the dataset's own (1-based)."""

    user: np.ndarray  # ratings: (N,) int
    item: np.ndarray
    rating: np.ndarray  # (N,) float
    timestamp: np.ndarray  # (N,) int
    user_age: dict[int, int]
    user_gender: dict[int, str]
    user_occupation: dict[int, str]
    user_zip: dict[int, str]
    item_title: dict[int, str]
    item_year: dict[int, int]  # 0 where unknown
    item_genres: dict[int, np.ndarray]  # multi-hot over GENRES


def cache_dir() -> pathlib.Path:
    return paths.cache_root() / "ml-100k"


def _has_files(d: pathlib.Path) -> bool:
    return all((d / f).is_file() for f in GROUPLENS_FILES) or all(
        (d / f).is_file() for f in RECBOLE_FILES
    )


def _from_grouplens(target: pathlib.Path) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=20) as response:
        payload = response.read()
    digest = hashlib.md5(payload).hexdigest()
    if digest != GROUPLENS_ZIP_MD5:
        raise FetchError(f"{GROUPLENS_URL}: md5 {digest} != published {GROUPLENS_ZIP_MD5}")
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        for name in GROUPLENS_FILES:
            (target / name).write_bytes(z.read(f"ml-100k/{name}"))


def _from_recbole_wheel(target: pathlib.Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               f"recbole=={RECBOLE_VERSION}"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        wheel = next(pathlib.Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name, expected in RECBOLE_FILES.items():
                data = z.read(f"recbole/dataset_example/ml-100k/{name}")
                digest = hashlib.sha256(data).hexdigest()
                if digest != expected:
                    raise FetchError(f"{wheel.name}:{name}: sha256 {digest} != {expected}")
                (target / name).write_bytes(data)


# MovieLens-100K's published sizes: a cached copy with other counts was cut short.
EXPECTED_ROWS = {"ratings": 100_000, "users": 943, "items": 1_682}
MANIFEST = "SHA256SUMS"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: pathlib.Path) -> None:
    """Records the sha256 of each data file, so later uses can re-verify the copy."""
    names = [n for n in (*GROUPLENS_FILES, *RECBOLE_FILES) if (directory / n).is_file()]
    (directory / MANIFEST).write_text("".join(f"{_sha256(directory / n)}  {n}\n" for n in names))


def cache_problem(directory: pathlib.Path) -> str | None:
    """Why a cached copy cannot be trusted (None if it can): a file whose sha256 differs from
    RecBole's pinned one or from the manifest written when it was fetched, or, with no
    manifest, row counts other than MovieLens-100K's."""
    if all((directory / f).is_file() for f in RECBOLE_FILES):
        for name, expected in RECBOLE_FILES.items():
            if _sha256(directory / name) != expected:
                return f"{name}: sha256 differs from the published copy's"
        return None
    manifest = directory / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if not (directory / name).is_file() or _sha256(directory / name) != digest:
                return f"{name}: sha256 differs from the one recorded when it was fetched"
        return None
    counts = {
        "ratings": _count_lines(directory / "u.data"),
        "users": _count_lines(directory / "u.user"),
        "items": _count_lines(directory / "u.item"),
    }
    if counts != EXPECTED_ROWS:
        return f"row counts {counts}, MovieLens-100K has {EXPECTED_ROWS}"
    return None


def _count_lines(path: pathlib.Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def fetch(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """A directory holding MovieLens-100K in either layout; downloads into the cache if needed.

    A ``data_dir`` given is used or refused (never silently replaced by the cache); the cache
    is re-verified before each use, and a damaged copy is moved aside and fetched again.
    """
    if data_dir:
        d = pathlib.Path(data_dir).expanduser()
        if not d.is_dir():
            raise FetchError(f"data_dir {d}: no such directory")
        if _has_files(d):
            return d
        present = sorted(p.name for p in d.iterdir())
        raise FetchError(
            f"data_dir {d}: incomplete; it needs {list(GROUPLENS_FILES)} (GroupLens) or "
            f"{list(RECBOLE_FILES)} (RecBole), found {present[:10]}"
        )
    tried = []
    cache = cache_dir()
    if _has_files(cache):
        problem = cache_problem(cache)
        if problem is None:
            return cache
        aside = cache.with_name(f"ml-100k.damaged-{os.getpid()}")
        with contextlib.suppress(OSError):  # another process moved it first
            os.rename(cache, aside)
        tried.append(f"cache {cache}: {problem}; moved to {aside}")
        log.warning("MovieLens cache %s is damaged (%s); fetching again", cache, problem)
    else:
        tried.append(f"cache {cache}: empty")
    cache.parent.mkdir(parents=True, exist_ok=True)
    for name, fetcher in (("GroupLens", _from_grouplens), ("RecBole wheel", _from_recbole_wheel)):
        # Staged beside the cache, so the rename that publishes it is atomic: complete files
        # only ever appear in the cache, and a process that loses a race to fill it keeps
        # the winner's copy.
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=cache.parent))
        try:
            fetcher(staging)
            write_manifest(staging)
            if _has_files(cache):
                shutil.rmtree(staging, ignore_errors=True)
                return cache
            if cache.exists():
                shutil.rmtree(cache)  # an incomplete leftover
            try:
                os.rename(staging, cache)
            except OSError:
                if not _has_files(cache):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
            return cache
        except Exception as e:  # noqa: BLE001 - every failure is reported together below
            tried.append(f"{name}: {type(e).__name__}: {e}")
            shutil.rmtree(staging, ignore_errors=True)
    raise FetchError(
        "could not obtain MovieLens-100K. Tried:\n  "
        + "\n  ".join(tried)
        + f"\nPlace u.data, u.user and u.item from {GROUPLENS_URL} (or RecBole's ml-100k.inter,"
        f" .user, .item) in {cache} or pass their directory as data_dir."
    )


def _rows(path: pathlib.Path, sep: str, n_fields: int, skip_header: bool, encoding: str):
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not {encoding} text ({e.reason})") from None
    # split on "\n" only: str.splitlines would also break at latin-1 control characters
    for number, line in enumerate(text.split("\n"), start=1):
        if skip_header and number == 1:
            continue
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split(sep)
        if len(fields) != n_fields:
            raise DataFormatError(
                f"{path}:{number}: expected {n_fields} fields separated by {sep!r}, "
                f"got {len(fields)}: {line[:80]!r}"
            )
        yield number, fields


def _int(path, number, value, what) -> int:
    try:
        number_value = float(value)
    except ValueError:
        raise DataFormatError(f"{path}:{number}: {what} {value!r} is not a number") from None
    if not math.isfinite(number_value) or number_value != int(number_value):
        raise DataFormatError(f"{path}:{number}: {what} {value!r} is not a whole number")
    return int(number_value)


def _float(path, number, value, what) -> float:
    try:
        out = float(value)
    except ValueError:
        raise DataFormatError(f"{path}:{number}: {what} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise DataFormatError(f"{path}:{number}: {what} {value!r} is not a finite number")
    return out


def _check(ok: bool, path, number, message: str) -> None:
    if not ok:
        raise DataFormatError(f"{path}:{number}: {message}")


RATING_RANGE = (1.0, 5.0)


def load(directory: str | os.PathLike) -> MovieLens:
    """Parses either layout in ``directory`` into the same tables; every value is checked
    (ids whole and positive, ratings within 1-5, each rating's user and item present in
    their tables, no id listed twice) and a bad one is a ``DataFormatError`` naming the
    file, the line and the column."""
    d = pathlib.Path(directory)
    grouplens = all((d / f).is_file() for f in GROUPLENS_FILES)
    ratings = []
    lines = []
    users: dict[str, dict] = {"age": {}, "gender": {}, "occupation": {}, "zip": {}}
    items: dict[str, dict] = {"title": {}, "year": {}, "genres": {}}
    if grouplens:
        files = {"ratings": d / "u.data", "users": d / "u.user", "items": d / "u.item"}
        rows = _rows(files["ratings"], "\t", 4, False, "latin-1")
        user_rows = _rows(files["users"], "|", 5, False, "latin-1")
        item_rows = _rows(files["items"], "|", 5 + len(GENRES), False, "latin-1")
    else:
        files = {k: d / f"ml-100k.{ext}" for k, ext in
                 (("ratings", "inter"), ("users", "user"), ("items", "item"))}  # fmt: skip
        rows = _rows(files["ratings"], "\t", 4, True, "utf-8")
        user_rows = _rows(files["users"], "\t", 5, True, "utf-8")
        item_rows = _rows(files["items"], "\t", 4, True, "utf-8")
    path = files["ratings"]
    low, high = RATING_RANGE
    for number, (u, i, r, t) in rows:
        row = (_int(path, number, u, "user id"), _int(path, number, i, "item id"),
               _float(path, number, r, "rating"), _int(path, number, t, "timestamp"))  # fmt: skip
        _check(row[0] >= 1, path, number, f"user id {u!r} must be >= 1")
        _check(row[1] >= 1, path, number, f"item id {i!r} must be >= 1")
        _check(low <= row[2] <= high, path, number, f"rating {r!r} outside {low:g}-{high:g}")
        _check(row[3] >= 0, path, number, f"timestamp {t!r} must be >= 0")
        ratings.append(row)
        lines.append(number)
    _check(bool(ratings), path, 1, "no ratings")
    path = files["users"]
    for number, (u, age, gender, occupation, zip_code) in user_rows:
        uid = _int(path, number, u, "user id")
        _check(uid not in users["age"], path, number, f"user id {uid} is listed twice")
        users["age"][uid] = _int(path, number, age, "age")
        _check(1 <= users["age"][uid] <= 120, path, number, f"age {age!r} outside 1-120")
        _check(gender in _GENDER_WORDS, path, number, f"gender {gender!r}; valid: M, F")
        users["gender"][uid], users["occupation"][uid], users["zip"][uid] = (
            gender,
            occupation,
            zip_code,
        )
    path = files["items"]
    for number, fields in item_rows:
        iid = _int(path, number, fields[0], "item id")
        _check(iid not in items["title"], path, number, f"item id {iid} is listed twice")
        if grouplens:
            title = fields[1]
            year = fields[2][-4:] if fields[2] else ""
            flags = [_int(path, number, g, "genre flag") for g in fields[5:]]
            _check(set(flags) <= {0, 1}, path, number, f"genre flags must be 0 or 1: {flags}")
            genres = np.array(flags, np.float32)
            if title.endswith(")") and title[-6:-5] == "(":
                title = title[:-7]
        else:
            title, year, classes = fields[1], fields[2], fields[3].split()
            unknown = sorted(set(classes) - set(GENRES))
            if unknown:
                raise DataFormatError(f"{path}:{number}: unknown genres {unknown}; valid: {GENRES}")
            genres = np.array([g in classes for g in GENRES], np.float32)
        items["title"][iid] = title
        items["year"][iid] = int(year) if year.isdigit() else 0
        items["genres"][iid] = genres
    for (uid, iid, _, _), number in zip(ratings, lines, strict=True):
        _check(uid in users["age"], files["ratings"], number,
               f"user id {uid} has no row in {files['users'].name}")  # fmt: skip
        _check(iid in items["title"], files["ratings"], number,
               f"item id {iid} has no row in {files['items'].name}")  # fmt: skip
    arr = np.array(ratings, dtype=np.float64).reshape(-1, 4)
    return MovieLens(
        user=arr[:, 0].astype(np.int64), item=arr[:, 1].astype(np.int64), rating=arr[:, 2],
        timestamp=arr[:, 3].astype(np.int64),
        user_age=users["age"], user_gender=users["gender"], user_occupation=users["occupation"],
        user_zip=users["zip"], item_title=items["title"], item_year=items["year"],
        item_genres=items["genres"],
    )  # fmt: skip


def temporal_split(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: sort by (timestamp, item id); the last ``max(1, ceil(n/10))`` are test, the
    ``max(1, ceil(n/10))`` before them validation, the rest train. Returns sorted row indices."""
    order = np.lexsort((item, timestamp, user))  # by user, then timestamp, then item id
    users_sorted = user[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    part = np.zeros(len(order), np.int8)  # 0 train, 1 validation, 2 test
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        n_test = max(1, math.ceil(n / 10))
        n_val = max(1, math.ceil(n / 10))
        part[e - n_test : e] = 2
        part[max(s, e - n_test - n_val) : e - n_test] = 1
    return tuple(np.sort(order[part == k]) for k in (0, 1, 2))


AGE_EDGES = (18, 25, 35, 45, 50, 56)  # buckets <18, 18-24, ..., 56+ (as MovieLens-1M)


def _index(values: list[str]) -> dict[str, int]:
    return {v: k for k, v in enumerate(sorted(set(values)))}


_GENDER_WORDS = {"M": "male", "F": "female"}
_OCCUPATION_WORDS = {"none": "person with no occupation", "other": "person"}


def item_text(ml: MovieLens, item: int, with_genres: bool = False) -> str:
    """ "Toy Story (1995)", plus ". Genres: Animation, Children's, Comedy" when asked: only
    where genres are not a prediction target, or the text would hand the model its labels."""
    year = ml.item_year.get(item, 0)
    text = ml.item_title[item] + (f" ({year})" if year else "")
    if with_genres:
        on = ml.item_genres[item]
        names = [g for g, flag in zip(GENRES, on, strict=True) if flag and g != "unknown"]
        if names:
            text += ". Genres: " + ", ".join(names)
    return text


def user_text(ml: MovieLens, user: int) -> str:
    """ "A 24-year-old male technician"."""
    age = f"{ml.user_age[user]}-year-old"
    occupation = ml.user_occupation[user]
    words = [
        age,
        _GENDER_WORDS.get(ml.user_gender[user], ""),
        _OCCUPATION_WORDS.get(occupation, occupation),
    ]
    article = "An" if age.startswith(("8", "11-", "18-")) else "A"
    return " ".join([article, *(w for w in words if w)])


def build_dataset(
    data_dir: str = "",
    seed: int = 0,
    cold_item_fraction: float = 0.0,
    genres_in_text: bool = False,
) -> MultiTaskDataset:
    """MovieLens-100K as a multi-task dataset: rating (regression), like = rating >= 4
    (binary), genre (multilabel over ``GENRES``) and rated ("will this user rate this
    movie", binary, every row a positive: train it with ``config.negatives``), split by
    ``temporal_split``.

    Inputs: user id, item id, age bucket, gender, occupation, zip prefix, release-decade
    bucket. Genres are not an input (they are a target). ``item_text`` holds "title (year)"
    (plus the genres with ``genres_in_text``, for configs that do not predict them) and
    ``user_text`` "A 24-year-old male technician", for text features.

    Cold start: with ``cold_item_fraction`` > 0, that fraction of the movies (drawn with
    ``seed``) is held out for test: every rating of theirs, from any split, goes to test
    only, so the model never sees them in training or selection. As many other movies are
    held out the same way for validation, where cold-start choices can be made.
    ``test_subsets`` / ``validation_subsets`` name the rows of cold and of warm movies.
    Otherwise ``seed`` is unused: the split is fixed.
    """
    data = load(fetch(data_dir or None))
    users = sorted(data.user_age)
    occupations = _index([data.user_occupation[u] for u in users])
    num_users, num_items = max(users) + 1, max(data.item_title) + 1

    def per_user(table, fn):
        out = np.zeros(num_users, np.int32)
        for u, v in table.items():
            out[u] = fn(v)
        return out

    def zip_prefix(z: str) -> int:
        return int(z[0]) if z[:1].isdigit() else 10

    age = per_user(data.user_age, lambda a: int(np.searchsorted(AGE_EDGES, a, side="right")))
    gender = per_user(data.user_gender, lambda g: int(g == "F"))
    occupation = per_user(data.user_occupation, lambda o: occupations[o])
    zip_code = per_user(data.user_zip, zip_prefix)
    decade = np.zeros(num_items, np.int32)
    genres = np.zeros((num_items, len(GENRES)), np.float32)
    for i, year in data.item_year.items():
        decade[i] = 0 if year == 0 else int(np.clip((year - 1920) // 10 + 1, 1, 9))
        genres[i] = data.item_genres[i]
    titles = [""] * num_items
    for i in data.item_title:
        titles[i] = item_text(data, i, with_genres=genres_in_text)
    descriptions = [""] * num_users
    for u in users:
        descriptions[u] = user_text(data, u)

    u, it = data.user, data.item
    features = {
        "user_id": u, "item_id": it, "age": age[u], "gender": gender[u],
        "occupation": occupation[u], "zip_prefix": zip_code[u], "decade": decade[it],
    }  # fmt: skip
    features = {k: np.asarray(v, np.int32) for k, v in features.items()}
    ones = np.ones(len(u), np.float32)
    everything = Split(
        features,
        labels={
            "rating": data.rating.astype(np.float32),
            "like": (data.rating >= 4).astype(np.float32),
            "genre": genres[it],
            "rated": ones,
        },
        masks={"rating": ones, "like": ones, "genre": ones, "rated": ones},
    )
    train, val, test = temporal_split(data.user, data.item, data.timestamp)
    subsets, val_subsets = {}, {}
    if cold_item_fraction > 0:
        train, val, test, subsets, val_subsets = hold_out_items(
            data.item, train, val, test, cold_item_fraction, seed
        )
    specs = (
        FeatureSpec("user_id", num_users), FeatureSpec("item_id", num_items),
        FeatureSpec("age", len(AGE_EDGES) + 1), FeatureSpec("gender", 2),
        FeatureSpec("occupation", len(occupations)), FeatureSpec("zip_prefix", 11),
        FeatureSpec("decade", 10),
    )  # fmt: skip
    tasks = (
        TaskSpec("rating", "regression"),
        TaskSpec("like", "binary"),
        TaskSpec("genre", "multilabel", num_classes=len(GENRES)),
        # Implicit feedback: every observed rating is a positive; the negatives are sampled
        # (config.negatives, mtl_jax/data/negatives.py).
        TaskSpec("rated", "binary"),
    )
    item_ids = np.asarray(sorted(data.item_title), np.int64)
    catalogue = Catalogue(
        user_features={
            "user_id": np.arange(num_users, dtype=np.int32), "age": age, "gender": gender,
            "occupation": occupation, "zip_prefix": zip_code,
        },
        item_features={"item_id": np.arange(num_items, dtype=np.int32), "decade": decade},
        items=item_ids,
        item_attributes=genres > 0,
    )  # fmt: skip
    return MultiTaskDataset(
        name="movielens", features=specs, tasks=tasks, train=everything.take(train),
        validation=everything.take(val), test=everything.take(test), item_text=tuple(titles),
        catalogue=catalogue, user_text=tuple(descriptions), test_subsets=subsets,
        validation_subsets=val_subsets,
        times={"train": data.timestamp[train], "validation": data.timestamp[val],
               "test": data.timestamp[test]},
    )  # fmt: skip
