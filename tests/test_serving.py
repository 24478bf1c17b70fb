"""Exported scorers (mtl_jax/serving): equal to in-process prediction for every trunk and
for text features, raw rows encoded as training did, named errors for bad exports and
bad requests, all-or-nothing export directories, the serve.py commands."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import files as files_config
from mtl_jax import parallel
from mtl_jax.data import load_dataset
from mtl_jax.models.trunks import TRUNKS
from mtl_jax.serving import ExportError, ModelDirError, RequestError, Scorer, export_trainer
from mtl_jax.serving import export as export_lib
from mtl_jax.text import features as text_features
from mtl_jax.train import Trainer
from tests.helpers import tiny_config
from tests.test_text_features import _fake_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "files_sample"


def _export(config, tmp_path, name="model"):
    dataset = load_dataset(config.data, config.seed, config.get("features"))
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    params = trainer.init_state().params
    out = export_trainer(trainer, params, tmp_path / name)
    return trainer, params, dataset, Scorer.load(out)


def _assert_same(got, want):
    assert set(got) == set(want)
    for task in want:
        np.testing.assert_allclose(got[task], want[task], rtol=0, atol=1e-6, err_msg=task)


@pytest.mark.parametrize(
    "trunk", [pytest.param(t, marks=[] if t == "mmoe" else [pytest.mark.slow]) for t in TRUNKS]
)
def test_the_export_predicts_what_the_trainer_predicts(tmp_path, trunk):
    config = tiny_config()
    config.model.trunk = trunk
    trainer, params, dataset, scorer = _export(config, tmp_path)
    want, _ = trainer.predict(params, dataset.test)
    _assert_same(scorer.score_inputs(dataset.test.features), want)
    # Raw rows of a built-in dataset are its ids, as Python values.
    rows = [{k: v[i].tolist() for k, v in dataset.test.features.items()} for i in range(37)]
    _assert_same(scorer.score(rows), {k: v[:37] for k, v in want.items()})
    tasks = {t["name"]: t for t in scorer.manifest["tasks"]}
    assert tasks["click"]["output"] == "probability"


def _csv_rows(path):
    with path.open() as f:
        return [{k: (None if v == "" else v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_a_file_run_with_text_scores_raw_rows_as_trained(tmp_path, monkeypatch):
    """The file template (hashed ids, vocabularies, dense statistics, a bag, a multilabel
    task) with its title column as a text feature: raw CSV rows, strings as read, give the
    in-process predictions; values training never saw take row 0."""
    monkeypatch.setattr(text_features, "text_embeddings", _fake_table)
    monkeypatch.setattr(
        text_features.TextSetup, "from_config", classmethod(lambda cls, *_: cls(dim=384))
    )
    config = files_config.get_config("smoke").unlock()
    config.text.features = ("title",)
    trainer, params, dataset, scorer = _export(config, tmp_path)
    assert "text_table_title" in str(list(scorer.manifest["param_dtypes"]))
    want, _ = trainer.predict(params, dataset.test)
    rows = _csv_rows(SAMPLE / "test.csv")
    _assert_same(scorer.score(rows), want)
    # JSON-typed values (numbers as numbers, a bag as a list) read like the CSV's strings.
    typed = [
        {**r, "item": int(r["item"]), "age": int(r["age"]),
         "tags": [t for t in (r["tags"] or "").split("|") if t]}
        for r in rows[:10]
    ]  # fmt: skip
    _assert_same(scorer.score(typed), {k: v[:10] for k, v in want.items()})
    unseen = {**rows[0], "user": "nobody", "category": "unknown", "item": "123", "title": "new"}
    encoded = scorer.rows.encode([unseen])
    assert encoded["user"][0] == encoded["category"][0] == encoded["item"][0] == 0
    assert encoded["title"][0] == 0


BAD_ROWS = [  # (the request's row made from a good one, message)
    (lambda good: {"user_id": 1}, r"row 0: missing features \["),
    (lambda good: "not a row", r"row 0: expected an object of features, got str"),
    (lambda good: {**good, "user_id": 10**6}, r"'user_id': 1000000 is not an id in \[0, 120\)"),
    (lambda good: {**good, "user_id": True}, r"feature 'user_id': True is not an id"),
    (lambda good: {**good, "user_id": "7"}, r"feature 'user_id': '7' is not an id"),
    (lambda good: {**good, "user_id": -1}, r"feature 'user_id': -1 is not an id"),
    (lambda good: {**good, "item_id": 2.5}, r"feature 'item_id': 2.5 is not an id"),
]


def test_bad_rows_are_named(tmp_path):
    _, _, dataset, scorer = _export(tiny_config(), tmp_path)
    good = {k: v[0].tolist() for k, v in dataset.test.features.items()}
    for make, match in BAD_ROWS:
        with pytest.raises(RequestError, match=match):
            scorer.score([make(good)])


def test_file_rows_with_bad_values_are_named(tmp_path):
    config = files_config.get_config("smoke").unlock()
    *_, scorer = _export(config, tmp_path)
    good = _csv_rows(SAMPLE / "test.csv")[0]
    cases = [
        ({"price": "cheap"}, r"request, row 0, column 'price': 'cheap' is not a number"),
        ({"price": float("inf")}, r"'price'.*inf is not a string or finite number"),
        ({"price": float("nan")}, r"'price'.*nan is not a string or finite number"),
        ({"age": [1, 2]}, r"feature 'age' \(column 'age'\): \[1, 2\] is not a string"),
        ({"user": {"id": 1}}, r"feature 'user' \(column 'user'\): \{'id': 1\} is not"),
        ({"click": None, "user": True}, r"feature 'user'.*True is not a string"),
    ]
    for change, match in cases:
        with pytest.raises(RequestError, match=match):
            scorer.score([{**good, **change}])
    with pytest.raises(RequestError, match="expected a non-empty list of rows"):
        scorer.score([])


def test_bad_workdirs_and_model_dirs_are_named(tmp_path):
    with pytest.raises(ExportError, match="has no config.json: not a run's workdir"):
        export_lib.export_workdir(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(ExportError, match="has no best checkpoint"):
        export_lib.export_workdir(tmp_path, tmp_path / "out")
    _, _, _, scorer = _export(tiny_config(), tmp_path, "m")
    with pytest.raises(ExportError, match="exists; an export is never written over"):
        export_lib.export_workdir(tmp_path, tmp_path / "m")
    (tmp_path / "m" / "params.npz").unlink()
    with pytest.raises(ModelDirError, match=r"not a complete export: missing \['params.npz'\]"):
        Scorer.load(tmp_path / "m")
    _export(tiny_config(), tmp_path, "m2")
    manifest = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    (tmp_path / "m2" / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ModelDirError, match="is export format 99; this code reads format 1"):
        Scorer.load(tmp_path / "m2")


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_lib.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        _export(tiny_config(), tmp_path, "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_serve_py_exports_a_run_and_scores_a_file(tmp_path):
    from mtl_jax.train import train_and_evaluate

    config = files_config.get_config("smoke")
    train_and_evaluate(config, str(tmp_path / "w"))
    run = lambda *a: subprocess.run(
        [sys.executable, "serve.py", *a], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    done = run("export", f"--workdir={tmp_path / 'w'}", f"--out={tmp_path / 'm'}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _csv_rows(SAMPLE / "test.csv")[:50]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run("score", f"--model={tmp_path / 'm'}", f"--input={tmp_path / 'rows.jsonl'}",
               f"--output={tmp_path / 's.jsonl'}", "--batch_size=16")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    scores = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    direct = Scorer.load(tmp_path / "m").score(rows)
    assert len(scores) == 50 and len(scores[0]["actions"]) == 3
    np.testing.assert_allclose([s["click"] for s in scores], direct["click"], atol=1e-6)
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
    done = run("score", f"--model={tmp_path / 'm'}", f"--input={tmp_path / 'bad.jsonl'}",
               f"--output={tmp_path / 'x.jsonl'}")  # fmt: skip
    assert done.returncode == 2 and "bad.jsonl:2: not a JSON object" in done.stderr
    context = {"user": rows[0]["user"], "age": rows[0]["age"]}
    candidates = [{k: r[k] for k in ("item", "category", "price", "tags")} for r in rows[:20]]
    request = {"context": context, "candidates": candidates, "k": 3}
    (tmp_path / "requests.jsonl").write_text(json.dumps(request) + "\n")
    done = run("rank", f"--model={tmp_path / 'm'}", f"--input={tmp_path / 'requests.jsonl'}",
               f"--output={tmp_path / 'r.jsonl'}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (ranked,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert ranked["items"] == Scorer.load(tmp_path / "m").rank(**request)
    done = run("export", f"--workdir={tmp_path}", f"--out={tmp_path / 'm3'}")
    assert done.returncode == 2 and "has no config.json" in done.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained tiny e-commerce model's export (its catalogue: 80 items)."""
    return _export(tiny_config(), tmp_path_factory.mktemp("ranked"))


CONTEXT = {"user_id": 3, "age": 1, "gender": 0, "region": 2}


def _catalogue_rows(dataset, items):
    cat = dataset.catalogue
    return [{**CONTEXT, **{k: int(v[i]) for k, v in cat.item_features.items()}} for i in items]


@pytest.mark.parametrize(
    "fusion, fuse",
    [
        (None, lambda p: p["click"]),
        ({"weights": {"click": 1.0, "rating": 0.1}}, lambda p: p["click"] + 0.1 * p["rating"]),
        ({"mode": "log_sum", "weights": {"click": 2, "purchase": 1}},
         lambda p: 2 * np.log(p["click"]) + np.log(p["purchase"])),
        ({"mode": "product", "weights": {"click": 1, "purchase": 1}},
         lambda p: p["click"] * p["purchase"]),
    ],
)  # fmt: skip
def test_rank_is_the_brute_force_top_k_of_the_fused_scores(exported, fusion, fuse):
    _, _, dataset, scorer = exported
    items = list(range(0, 80, 3))
    ranked = scorer.rank(CONTEXT, items, k=7, fusion=fusion)
    predictions = scorer.score(_catalogue_rows(dataset, items))
    scores = fuse({k: v.astype(np.float64) for k, v in predictions.items()})
    want = [items[i] for i in np.argsort(-scores, kind="stable")[:7]]
    assert [r["item"] for r in ranked] == want
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(scores)[::-1][:7], rtol=1e-6)
    # Inline candidates (item features in the request) rank the same; items by position.
    inline = [
        {k: v for k, v in row.items() if k not in CONTEXT}
        for row in _catalogue_rows(dataset, items)
    ]
    assert [items[r["item"]] for r in scorer.rank(CONTEXT, inline, k=7, fusion=fusion)] == want


def test_rank_diversifies_by_mmr_and_multiplies_by_a_field(exported):
    from mtl_jax import metrics

    _, _, dataset, scorer = exported
    items = list(range(80))
    scores = scorer.score(_catalogue_rows(dataset, items))["click"].astype(np.float64)
    relevance = (scores - scores.min()) / (scores.max() - scores.min())
    similarity = metrics.jaccard_similarity(dataset.catalogue.item_attributes[items])
    want = metrics.mmr_rerank(relevance[None], similarity, 10, 0.3)[0]
    ranked = scorer.rank(CONTEXT, items, k=10, diversity={"lambda": 0.3})
    assert [r["item"] for r in ranked] == [items[i] for i in want]
    brands = dataset.catalogue.item_features["brand"][items]
    by_brand = metrics.mmr_rerank(
        relevance[None], metrics.jaccard_similarity(np.eye(10)[brands]), 10, 0.3
    )[0]
    ranked = scorer.rank(CONTEXT, items, k=10, diversity={"lambda": 0.3, "attribute": "brand"})
    assert [r["item"] for r in ranked] == [items[i] for i in by_brand]
    plain = [r["item"] for r in scorer.rank(CONTEXT, items, k=10)]
    categories = dataset.catalogue.item_features["category"]
    assert len({categories[i] for i in want}) > len({categories[i] for i in plain})
    # times: pCTR x price (a field of each inline candidate).
    rows = _catalogue_rows(dataset, items[:20])
    inline = [
        {**{k: v for k, v in r.items() if k not in CONTEXT}, "bid": 1.0 + i}
        for i, r in enumerate(rows)
    ]
    ranked = scorer.rank(
        CONTEXT, inline, k=3, fusion={"mode": "product", "weights": {"click": 1}, "times": "bid"}
    )
    product = scores[:20] * (1.0 + np.arange(20))
    assert [r["item"] for r in ranked] == list(np.argsort(-product, kind="stable")[:3])


BAD_RANKS = [  # (keyword arguments of rank, message)
    (dict(fusion={"weights": {"clicks": 1}}), r"unknown task 'clicks'; tasks: \['click'"),
    (dict(fusion={"weights": {"category": 1}}), r"'category' is a multiclass task"),
    (dict(fusion={"mode": "max", "weights": {"click": 1}}), r"fusion.mode: 'max'; valid"),
    (dict(fusion={"weights": {}}), r"fusion.weights: expected an object"),
    (dict(fusion={"weights": {"click": "1"}}), r"fusion.weights.click: '1' is not a finite"),
    (dict(fusion={"weights": {"click": 1}, "scale": 2}), r"fusion: unknown keys \['scale'\]"),
    (dict(fusion={"weights": {"click": 1}, "times": "bid"}), r"needs candidates as objects"),
    (dict(fusion=[1]), r"fusion: expected an object, got list"),
    (dict(candidates=[]), r"candidates: 0 given; between 1 and 10000"),
    (dict(candidates=list(range(80)) * 126), r"candidates: 10080 given"),
    (dict(candidates=[1, {"item_id": 2}]), r"all item ids or all objects, not a mix"),
    (dict(candidates=[1, 999]), r"candidate 1: 999 is not an item of the catalogue"),
    (dict(candidates=[1, "2"]), r"candidate 1: '2' is not an item"),
    (dict(candidates="1,2"), r"candidates: expected a list"),
    (dict(k=0), r"k: 0 is not a positive integer"),
    (dict(k=2.5), r"k: 2.5 is not a positive integer"),
    (dict(diversity={"lambda": 1.5}), r"diversity.lambda: 1.5 is not a number in \[0, 1\]"),
    (dict(diversity={"lambda": 0.5, "attribute": "colour"}), r"unknown feature 'colour'"),
    (dict(diversity={"lamda": 0.5}), r"diversity: unknown keys \['lamda'\]"),
    (dict(context={"user_id": 3}), r"row 0: missing features \['age', 'gender', 'region'\]"),
    (dict(context=[3]), r"context: expected an object of features, got list"),
]


def test_bad_rank_requests_are_named(exported):
    *_, scorer = exported
    for change, match in BAD_RANKS:
        kwargs = {"context": CONTEXT, "candidates": [1, 2, 3], "k": 2, **change}
        with pytest.raises(RequestError, match=match):
            scorer.rank(**kwargs)


def test_the_default_fusion_is_the_runs_ranking_rule(tmp_path):
    config = tiny_config()
    config.ranking.fusion.click = 1.0
    config.ranking.fusion.purchase = 2.0
    config.ranking.fusion_mode = "product"
    _, _, dataset, scorer = _export(config, tmp_path)
    assert scorer.manifest["fusion"] == {
        "mode": "product",
        "weights": {"click": 1.0, "purchase": 2.0},
        "times": "",
    }
    items = list(range(30))
    predictions = scorer.score(_catalogue_rows(dataset, items))
    fused = predictions["click"].astype(float) * predictions["purchase"].astype(float) ** 2
    ranked = scorer.rank(CONTEXT, items, k=5)
    assert [r["item"] for r in ranked] == list(np.argsort(-fused, kind="stable")[:5])
