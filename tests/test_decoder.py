"""Llama and Qwen2 decoders in Flax (mtl_jax/text/decoder.py) against the outputs of the
original Hugging Face implementation: small randomly initialised models saved by
transformers with their hidden states and logits in ``../shared/reference/decoders/``."""

from __future__ import annotations

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from mtl_jax.text import DecoderConfig, DecoderLM, decoder_hidden_states
from mtl_jax.text.decoder import DecoderFilesError, load_params

DECODERS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "decoders"


def _reference(kind: str) -> tuple[pathlib.Path, dict]:
    directory = DECODERS / kind
    if not (directory / "reference.npz").is_file():
        pytest.skip(f"shared reference {directory} absent (only in the development checkout)")
    return directory, dict(np.load(directory / "reference.npz"))


def _assert_parity(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> None:
    a, b = got[mask > 0], want[mask > 0]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= 0.9999 and np.abs(a - b).max() <= 1e-4, (
        cosine.min(),
        np.abs(a - b).max(),
    )


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hidden_states_and_logits_match_the_original(kind):
    directory, ref = _reference(kind)
    hidden = decoder_hidden_states(directory, ref["input_ids"], ref["attention_mask"])
    assert hidden.shape == ref["last_hidden_state"].shape and hidden.dtype == np.float32
    _assert_parity(hidden, ref["last_hidden_state"], ref["attention_mask"])
    config = DecoderConfig.from_json(directory / "config.json")
    assert config.attention_bias == (kind == "qwen2")
    _, logits = DecoderLM(config).apply(
        {"params": load_params(directory, config)}, ref["input_ids"], ref["attention_mask"], True
    )
    mask = ref["attention_mask"] > 0
    np.testing.assert_allclose(np.asarray(logits)[mask], ref["logits"][mask], atol=1e-4)


def test_sharded_weights_and_the_top_level_rope_theta_read_the_same(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, ref = _reference("qwen2")
    weights = load_file(str(directory / "model.safetensors"))
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(tmp_path / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((directory / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": theta}))
    hidden = decoder_hidden_states(tmp_path, ref["input_ids"], ref["attention_mask"])
    _assert_parity(hidden, ref["last_hidden_state"], ref["attention_mask"])


def test_bad_model_directories_are_named(tmp_path):
    directory, ref = _reference("llama")
    ids, mask = ref["input_ids"][:1], ref["attention_mask"][:1]
    with pytest.raises(DecoderFilesError, match="no config.json"):
        decoder_hidden_states(tmp_path, ids, mask)
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(DecoderFilesError, match=r"model_type 'gpt2' is not supported; supported"):
        decoder_hidden_states(tmp_path, ids, mask)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DecoderFilesError, match="no model.safetensors or model.safetensors.index"):
        decoder_hidden_states(tmp_path, ids, mask)
    shutil.copy(directory / "model.safetensors", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 500}))
    with pytest.raises(
        DecoderFilesError, match=r"embed_tokens is \(384, 64\), config.json says \(500, 64\)"
    ):
        decoder_hidden_states(tmp_path, ids, mask)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 384\)"):
        decoder_hidden_states(tmp_path, ids + 400, mask)
    long = np.zeros((1, 300), np.int32)
    with pytest.raises(ValueError, match="300 tokens exceed the model's 256 positions"):
        decoder_hidden_states(tmp_path, long, np.ones_like(long))


def _lora_model(kind, lora):
    from mtl_jax.text.decoder import LoRAConfig

    directory, ref = _reference(kind)
    config = DecoderConfig.from_json(directory / "config.json")
    model = DecoderLM(config, LoRAConfig(**lora))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    init = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, mask, task=0)["params"])
    base = load_params(directory, config)
    # The base weights where the checkpoint has them; the adapters as initialised.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: _at(base, path) if _has(base, path) else x, init
    )
    return model, params, ids, mask, ref


def _keys(path):
    return [getattr(k, "key", k) for k in path]


def _has(tree, path):
    for k in _keys(path):
        if not isinstance(tree, dict) or k not in tree:
            return False
        tree = tree[k]
    return True


def _at(tree, path):
    for k in _keys(path):
        tree = tree[k]
    return tree


def test_lora_starts_as_the_base_model_and_trains_only_its_adapters():
    model, params, ids, mask, ref = _lora_model(
        "qwen2", dict(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    )
    hidden = model.apply({"params": params}, ids, mask)  # B = 0: the base model's output
    _assert_parity(np.asarray(hidden), ref["last_hidden_state"], ref["attention_mask"])
    # Move the adapters off zero so every adapter weight takes a gradient.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if _keys(path)[-1] == "lora_b" else x, params
    )
    grads = jax.jit(jax.grad(lambda p: (model.apply({"params": p}, ids, mask) ** 2).mean()))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        name = "/".join(map(str, _keys(path)))
        if "lora" in name:
            assert np.abs(np.asarray(g)).max() > 0, name
        else:
            assert not np.asarray(g).any(), name  # the base model is frozen


def test_a_tasks_adapters_take_no_gradient_from_another_tasks_loss():
    model, params, ids, mask, _ = _lora_model(
        "llama", dict(rank=2, alpha=4.0, targets=("q_proj", "up_proj"), task_sets=3)
    )
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if _keys(path)[-1] in ("lora_b", "lora_task_b") else x, params
    )
    loss = lambda p: (model.apply({"params": p}, ids, mask, task=1) ** 2).mean()
    grads = jax.jit(jax.grad(loss))(params)
    checked = 0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if _keys(path)[-1] in ("lora_task_a", "lora_task_b"):
            g = np.asarray(g)
            assert np.abs(g[1]).max() > 0 and not g[0].any() and not g[2].any()
            checked += 1
    assert checked == 2 * 2 * 3  # 2 targets x (a, b) x 3 layers


def test_sharded_over_a_mesh_the_decoder_computes_the_same(kind="qwen2"):
    """Parameters carry logical axes: with ``mlp_out -> model`` the projections split
    Megatron-style (out of the residual stream by columns, back into it by rows) and the
    vocabulary by rows; on a 4x2 mesh of the 8 forced CPU devices the output is unchanged."""
    from mtl_jax import parallel

    directory, ref = _reference(kind)
    config = DecoderConfig.from_json(directory / "config.json")
    model = DecoderLM(config)
    ids, mask = ref["input_ids"][:4], ref["attention_mask"][:4]
    mesh = parallel.make_mesh(8, model=2)
    init = lambda key: model.init(key, ids, mask, True)  # with the LM head
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))["params"]
    rules = {**parallel.DEFAULT_AXIS_RULES, "mlp_out": "model"}
    shardings = parallel.param_shardings(boxed, mesh, rules)
    layer = shardings["layers_0"]
    assert layer["self_attn"]["q_proj"]["kernel"].spec == jax.P(None, "model")
    assert layer["self_attn"]["q_proj"]["bias"].spec == jax.P("model")
    assert layer["self_attn"]["o_proj"]["kernel"].spec == jax.P("model", None)
    assert layer["mlp"]["down_proj"]["kernel"].spec == jax.P("model", None)
    assert shardings["embed_tokens"]["embedding"].spec == jax.P("model", None)
    assert shardings["lm_head"]["kernel"].spec == jax.P(None, "model")
    params = jax.device_put(load_params(directory, config), shardings)
    hidden = jax.jit(model.apply)({"params": params}, ids, mask)
    _assert_parity(np.asarray(hidden), ref["last_hidden_state"][:4], mask)
