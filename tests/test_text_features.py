"""Text features in the model: frozen sentence-embedding tables, learned projections, the
disk cache, and the config checks. The encoder is replaced by a stub where the test is about
the plumbing (the encoder itself is tested against the original model in test_text.py)."""

import jax
import numpy as np
import pytest

from mtl_jax import configlib, parallel
from mtl_jax.data import load_dataset
from mtl_jax.text import features as text_features
from mtl_jax.train import Trainer
from tests.helpers import tiny_config


def _fake_table(texts, model_dir="", batch_size=64):
    rng = np.random.default_rng(len(texts))
    table = rng.normal(size=(len(texts), 384)).astype(np.float32)
    return table / np.linalg.norm(table, axis=1, keepdims=True)


@pytest.fixture
def text_config(monkeypatch):
    monkeypatch.setattr(text_features, "text_embeddings", _fake_table)
    monkeypatch.setattr(
        text_features.TextSetup, "from_config", classmethod(lambda cls, *_: cls(dim=384))
    )
    config = tiny_config()
    config.text.features = ("item_id",)
    return config


def test_text_table_is_frozen_and_projection_learns(text_config):
    dataset = load_dataset(text_config.data, text_config.seed)
    trainer = Trainer(text_config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    table = np.asarray(state.params["embedding"]["text_table_item_id"])
    np.testing.assert_array_equal(table, _fake_table(dataset.item_text))
    proj = np.asarray(state.params["embedding"]["text_proj_item_id"]["kernel"])
    it = trainer.train_iterator()
    for _ in range(10):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    np.testing.assert_array_equal(state.params["embedding"]["text_table_item_id"], table)
    assert (
        np.abs(np.asarray(state.params["embedding"]["text_proj_item_id"]["kernel"]) - proj).max()
        > 1e-4
    )


def test_predictions_read_the_text_of_the_batch_item(text_config):
    """Swapping two items' text rows swaps what the text block contributes for them."""
    dataset = load_dataset(text_config.data, text_config.seed)
    trainer = Trainer(text_config, dataset, mesh=parallel.make_mesh(1))
    params = trainer.init_state().params
    feats = {k: v[:2] for k, v in dataset.test.features.items()}
    feats["item_id"] = np.array([3, 5], np.int32)
    embed = lambda p, f: trainer.model.apply({"params": p}, f, method=type(trainer.model).embed)
    base = np.asarray(embed(params, feats))
    swapped = jax.tree.map(lambda x: x, params)
    table = np.asarray(params["embedding"]["text_table_item_id"]).copy()
    table[[3, 5]] = table[[5, 3]]
    swapped["embedding"] = {**params["embedding"], "text_table_item_id": table}
    changed = np.asarray(embed(swapped, feats))
    width = text_config.model.embed_dim
    start = len(text_config.input_features) * width  # the text block follows the id blocks
    text_block = slice(start, start + width)
    np.testing.assert_allclose(changed[0, text_block], base[1, text_block], rtol=1e-6)
    np.testing.assert_allclose(changed[1, text_block], base[0, text_block], rtol=1e-6)
    np.testing.assert_array_equal(changed[:, :start], base[:, :start])


def test_embeddings_are_cached_by_model_and_text(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path))
    calls = []

    class Stub:
        def encode(self, texts, batch_size):
            calls.append(list(texts))
            return _fake_table(texts)

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (model_dir / name).write_text(name)
    monkeypatch.setattr(text_features, "default_encoder", lambda directory: Stub())
    first = text_features.text_embeddings(["a", "b"], str(model_dir))
    again = text_features.text_embeddings(["a", "b"], str(model_dir))
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1, "the second call must read the cache"
    text_features.text_embeddings(["a", "c"], str(model_dir))
    assert len(calls) == 2, "other texts, other cache entry"
    assert len(list((tmp_path / "text_features").glob("*.npy"))) == 2


def test_text_config_errors_name_the_problem():
    config = tiny_config()
    config.text.features = ("title",)
    with pytest.raises(configlib.ConfigError, match=r"text.features.*'title'.*item_id"):
        configlib.validate(config)
    config = tiny_config()
    config.text.mode = "tuned"
    with pytest.raises(configlib.ConfigError, match="text.mode"):
        configlib.validate(config)
    config = tiny_config()
    config.text.features = ("user_id",)  # the e-commerce simulator has item titles only
    dataset = load_dataset(config.data, config.seed)
    with pytest.raises(configlib.ConfigError, match=r"no text for feature 'user_id'"):
        configlib.validate_against_dataset(config, dataset)


def test_genres_in_text_refused_when_genre_is_a_target():
    from configs import movielens as movielens_config

    config = movielens_config.get_config("smoke")
    config.data.genres_in_text = True
    with pytest.raises(configlib.ConfigError, match="leaks the labels"):
        configlib.validate(config)


@pytest.mark.slow
def test_finetune_trains_only_the_top_layers(text_encoder):
    """Fine-tune mode with finetune_layers=1: the in-model encoder starts as the pretrained
    one (same sentence vectors as ``encode``), the top layer and the projection move, every
    other encoder weight and the token table stay exactly as loaded."""
    config = tiny_config(batch_size=16)
    config.text.update(features=("item_id",), mode="finetune", finetune_layers=1)
    config.text.finetune_learning_rate = 1e-3
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    start = jax.device_get(state.params["embedding"])

    # Sentence vectors inside the model equal the standalone encoder's.
    tokens = np.asarray(start["text_tokens_item_id"])[:5].astype(np.int32)
    mask = (tokens > 0).astype(np.int32)
    np.testing.assert_allclose(
        text_encoder.embed_padded(tokens, mask),
        text_encoder.encode(list(dataset.item_text[:5])),
        atol=1e-5,
    )
    it = trainer.train_iterator()
    for _ in range(3):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    end = jax.device_get(state.params["embedding"])
    moved = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    encoder_start, encoder_end = start["text_encoder"], end["text_encoder"]
    for layer in encoder_start:
        change = max(jax.tree.leaves(jax.tree.map(moved, encoder_start[layer], encoder_end[layer])))
        if layer == "layer_5":
            assert change > 0, "the top layer must train"
        else:
            assert change == 0, f"{layer} is frozen but moved by {change}"
    assert moved(start["text_tokens_item_id"], end["text_tokens_item_id"]) == 0
    assert moved(start["text_proj_item_id"]["kernel"], end["text_proj_item_id"]["kernel"]) > 0


def test_unseen_ids_start_and_stay_at_zero():
    config = tiny_config()
    config.data.num_items = 2000  # 4000 impressions cannot reach them all
    config.model.zero_unseen_ids = True
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    seen = np.zeros(config.data.num_items, bool)
    seen[dataset.train.features["item_id"]] = True
    assert 0 < seen.sum() < len(seen), "the tiny data must leave some items out of train"
    state = trainer.init_state()
    it = trainer.train_iterator()
    for _ in range(5):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    table = np.asarray(state.params["embedding"]["item_id"]["embedding"])
    assert np.all(table[~seen] == 0) and np.all(np.abs(table[seen]).sum(1) > 0)


def test_id_dropout_zeroes_whole_id_embeddings_in_training_only():
    config = tiny_config()
    config.model.update(id_dropout=0.5, id_dropout_features=("item_id",))
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    params = trainer.init_state().params
    feats = {k: v[:400] for k, v in dataset.train.features.items()}
    embed = lambda **kw: np.asarray(
        trainer.model.apply({"params": params}, feats, method=type(trainer.model).embed, **kw)
    )
    width = config.model.embed_dim
    item = config.input_features.index("item_id")
    block = slice(item * width, (item + 1) * width)
    evaluation = embed()
    training = embed(train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    dropped = np.all(training[:, block] == 0, axis=1)
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_array_equal(training[~dropped, block], evaluation[~dropped, block])
    others = [i for i in range(len(config.input_features)) if i != item]
    for i in others:  # no other feature is touched
        cols = slice(i * width, (i + 1) * width)
        np.testing.assert_array_equal(training[:, cols], evaluation[:, cols])


def test_a_file_text_column_feeds_the_model_its_rows_texts(monkeypatch):
    """A ``text`` column of a file dataset (the template's titles): the frozen table holds
    one vector per distinct text of every split, and an example reads its own row's."""
    from configs import files as files_config

    monkeypatch.setattr(text_features, "text_embeddings", _fake_table)
    monkeypatch.setattr(
        text_features.TextSetup, "from_config", classmethod(lambda cls, *_: cls(dim=384))
    )
    config = files_config.get_config("smoke").unlock()
    config.text.features = ("title",)
    configlib.validate(config)
    dataset = load_dataset(config.data, config.seed, config.features)
    configlib.validate_against_dataset(config, dataset)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    table = np.asarray(state.params["embedding"]["text_table_title"])
    texts = dataset.texts["title"]
    np.testing.assert_array_equal(table, _fake_table(texts))
    titles = [texts[i] for i in dataset.test.features["title"]]
    assert all(t.endswith(f"item {t.split()[-1]}") for t in titles) and "" not in titles
    it = trainer.train_iterator()
    state, metrics = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    assert np.isfinite(np.asarray(metrics["loss"]))
    config.text.features = ("tags",)
    with pytest.raises(configlib.ConfigError, match=r"no text for 'tags'; valid: .*'title'"):
        configlib.validate(config)
