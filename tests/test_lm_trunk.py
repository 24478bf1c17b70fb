"""A language model as the shared trunk (model.trunk="llm"): prompts, frozen base weights
and LoRA adapters, per-task adapters, end-to-end runs, and the errors of bad model files."""

from __future__ import annotations

import json
import pathlib
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mtl_jax import checkpoint, parallel
from mtl_jax.configlib import ConfigError
from mtl_jax.data.schema import FeatureSpec, MultiTaskDataset, Split
from mtl_jax.errors import UserError
from mtl_jax.step import TASK_ADAPTERS, _mean_task_losses, split_frozen
from mtl_jax.tasks import TaskSpec
from mtl_jax.text import lm as lm_lib
from mtl_jax.text.bert import BertConfig, BertEncoder
from mtl_jax.text.decoder import DecoderFilesError, LoRAConfig
from mtl_jax.text.prompts import PROMPT, PROMPT_LENGTH, build_prompts
from mtl_jax.train import Trainer, train_and_evaluate
from mtl_jax.trainer import load_run_dataset
from tests.helpers import tiny_config

DECODERS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "decoders"


def _decode(tokens: np.ndarray, length: int) -> str:
    """ByteTokenizer ids back to text (the first token is its begin token)."""
    assert tokens[0] == 1
    return bytes(int(t) - 3 for t in tokens[1:length]).decode("utf-8")


def _toy_dataset() -> MultiTaskDataset:
    """Two users, five items; user 0's train rows out of time order in the file."""

    def split(users, items):
        n = len(users)
        return Split(
            {"user_id": np.asarray(users, np.int32), "item_id": np.asarray(items, np.int32)},
            {"y": np.zeros(n, np.float32)},
            {"y": np.ones(n, np.float32)},
        )

    return MultiTaskDataset(
        name="toy",
        features=(FeatureSpec("user_id", 2), FeatureSpec("item_id", 5)),
        tasks=(TaskSpec("y", "regression"),),
        train=split([0, 0, 0, 1, 0], [2, 0, 1, 3, 4]),
        validation=split([0], [3]),
        test=split([1, 0], [0, 2]),
        item_text=("Alpha", "Beta", "Gamma", "Delta", "Epsilon"),
        user_text=("a cook", "a pilot"),
        times={
            "train": np.asarray([30, 10, 20, 5, 20]),
            "validation": np.asarray([50]),
            "test": np.asarray([60, 25]),
        },
    )


def _expected(dataset: MultiTaskDataset, name: str, row: int, history: int) -> str:
    """Brute force: the user's train rows strictly before this row by (time, item), in
    that order, the last ``history`` of them."""
    split = dataset.split(name)
    user, item = split.features["user_id"][row], split.features["item_id"][row]
    key = (dataset.times[name][row], item)
    train = dataset.train.features
    past = sorted(
        (int(dataset.times["train"][r]), int(train["item_id"][r]))
        for r in range(len(dataset.train))
        if train["user_id"][r] == user and (dataset.times["train"][r], train["item_id"][r]) < key
    )
    past = past[-history:] if history else []
    titles = "".join(f" {dataset.item_text[i]};" for _, i in past)
    watched = f" Watched:{titles}" if past else ""
    return f"User: {dataset.user_text[user]}.{watched} Candidate: {dataset.item_text[item]}."


@pytest.mark.parametrize("history", [0, 2, 10])
def test_prompts_hold_earlier_train_history_in_time_order(history):
    dataset = _toy_dataset()
    built = build_prompts(dataset, lm_lib.ByteTokenizer(), history, max_tokens=256)
    for name, (tokens, lengths) in built.items():
        assert tokens.shape[1] in (64, 128) and tokens.dtype == np.int32
        for row in range(len(lengths)):
            assert _decode(tokens[row], lengths[row]) == _expected(dataset, name, row, history)
            assert not tokens[row, lengths[row] :].any()  # right padding
    # The train row (user 0, item 2, t=30) sees items 0 (t=10), 1 and 4 (t=20; by item id).
    text = _decode(built["train"][0][0], built["train"][1][0])
    assert "Watched: Alpha; Beta; Epsilon;" in text or history < 3


def test_long_prompts_drop_the_oldest_history_first():
    dataset = _toy_dataset()
    full = _expected(dataset, "validation", 0, 10)  # four train items before t=50
    tokens, lengths = build_prompts(dataset, lm_lib.ByteTokenizer(), 10, max_tokens=64)[
        "validation"
    ]
    text = _decode(tokens[0], lengths[0])
    assert len(full) + 1 > 64 >= lengths[0]
    assert text.endswith(" Candidate: Delta.") and text.startswith("User: a cook.")
    kept = text.split(" Watched:")[1].split(" Candidate:")[0]
    assert full.split(" Candidate:")[0].endswith(kept)  # the newest items, in order
    assert "Alpha" not in kept and "Epsilon" in kept
    # Shorter still: no history at all, then the profile is cut; the candidate stays.
    tokens, lengths = build_prompts(dataset, lm_lib.ByteTokenizer(), 10, max_tokens=24)[
        "validation"
    ]
    assert _decode(tokens[0], lengths[0]) == "User:" + " Candidate: Delta."
    assert lengths[0] == 24


def _lm_config(**llm):
    config = tiny_config(num_steps=6, eval_every=3, checkpoint_every=3, log_every=1)
    config.model.trunk = "llm"
    config.ranking.enabled = False
    config.llm.update(preset="tiny-llama", history=2, max_tokens=64)
    config.llm.lora.update(**llm)
    return config


@pytest.fixture(scope="module")
def lm_trainer():
    """A trainer of the tiny e-commerce data with a tiny random decoder as its trunk, LoRA
    on q and v with per-task adapter sets, and PCGrad combining the shared trunk."""
    config = _lm_config(per_task=True)
    config.balancing.method = "pcgrad"
    dataset = load_run_dataset(config)
    return Trainer(config, dataset, mesh=parallel.make_mesh(1))


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_training_changes_only_adapters_neck_embeddings_and_towers(lm_trainer):
    trainer = lm_trainer
    state = trainer.init_state()
    before = _flat(state.params)
    it = trainer.train_iterator(num_steps=2)
    for batch in it:
        state, metrics = trainer.train_step(state, parallel.to_global_batch(batch, trainer.mesh))
        assert bool(metrics["applied"])
    after = _flat(state.params)
    assert before.keys() == after.keys()
    base = [p for p in before if p.startswith("trunk/lm/") and "/lora_" not in p]
    adapters = [p for p in before if "/lora_" in p]
    assert len(base) == 20 and {p.rsplit("/", 1)[1] for p in adapters} == {
        "lora_a", "lora_b", "lora_task_a", "lora_task_b",
    }  # fmt: skip
    for p in base:
        np.testing.assert_array_equal(after[p], before[p], err_msg=p)
    for p in [q for q in adapters if q.endswith("_b")]:  # zero at init, trained from step 1
        assert np.abs(after[p] - before[p]).max() > 0, p
    for prefix in ("trunk/neck/", "towers_", "embedding/"):
        changed = [p for p in before if p.startswith(prefix) and (after[p] != before[p]).any()]
        assert changed, prefix
    # The optimizer holds state for the trainable parameters only.
    opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
    base_size = sum(before[p].size for p in base)
    assert opt_leaves < base_size


def test_per_task_adapters_take_no_gradient_from_other_tasks(lm_trainer):
    trainer = lm_trainer
    params = jax.device_get(trainer.init_state().params)
    rng = np.random.default_rng(0)
    # Give every task's B matrices values, so the A matrices' gradients are not all zero.
    flat = _flat(params)
    for p in flat:
        if p.endswith("lora_task_b"):
            flat[p] = rng.normal(size=flat[p].shape).astype(np.float32) * 0.1
    params = traverse_util.unflatten_dict(flat, sep="/")
    batch = next(trainer.train_iterator(num_steps=1))
    tasks = trainer.tasks

    def task_losses(params):
        logits = trainer.model.apply({"params": params}, batch["features"], train=False)
        return _mean_task_losses(tasks, logits, batch)

    one_loss = jax.jit(jax.grad(lambda p, s: task_losses(p)[s]))  # s traced: one program
    for s in range(len(tasks)):
        grads = _flat(one_loss(params, s))
        task_a = {p: g for p, g in grads.items() if p.endswith("lora_task_a")}
        assert task_a
        for p, g in task_a.items():
            for t in range(len(tasks)):
                if t == s:
                    assert np.abs(g[t]).max() > 0, (p, t)
                else:
                    np.testing.assert_array_equal(g[t], 0.0, err_msg=f"{p} task {t} from {s}")
    # Gradient methods see the shared adapters as the trunk; the per-task ones sit outside.
    trainable, frozen = split_frozen(params)
    trunk_paths = _flat(trainable["trunk"])
    assert any("lora_a" in p for p in trunk_paths)
    assert not any("lora_task" in p or p.endswith("kernel") and p.startswith("lm/")
                   for p in trunk_paths)  # fmt: skip
    assert all("lora_task" in p for p in _flat(trainable[TASK_ADAPTERS]))
    assert frozen and not any("lora" in p for p in frozen)


def test_the_steps_per_task_trunk_gradients_equal_each_losss_own(lm_trainer):
    """The per-task trunk gradients gradient methods combine (step._per_task_trunk_grads in
    the mode an LM trunk takes) equal each task loss's own jax.grad, adapters included."""
    from mtl_jax.step import (
        _losses_from_embedded,
        _per_task_trunk_grads,
        _split_params,
        _WithFrozen,
        task_gradient_mode,
    )

    trainer = lm_trainer
    assert task_gradient_mode(trainer.model, "batched") == "sequential"
    params = _flat(jax.device_get(trainer.init_state().params))
    rng = np.random.default_rng(1)
    for p in params:
        if "lora_" in p and p.endswith("_b"):
            params[p] = rng.normal(size=params[p].shape).astype(np.float32) * 0.1
    params = traverse_util.unflatten_dict(params, sep="/")
    batch = next(trainer.train_iterator(num_steps=1))
    trainable, frozen = split_frozen(params)
    model = _WithFrozen(trainer.model, frozen)
    embedding, trunk, rest = _split_params(trainable)
    x = model.apply({"params": {"embedding": embedding}}, batch["features"], method="embed")

    def losses(tr):
        return _losses_from_embedded(model, trainer.tasks, batch, tr, rest, x, train=False)

    num_tasks = len(trainer.tasks)

    @jax.jit  # one program each (an eager vjp of the decoder compiles op by op)
    def step_grads(tr):
        return _per_task_trunk_grads(jax.vjp(losses, tr)[1], num_tasks, "sequential")

    @jax.jit
    def own_grads(tr):
        return [jax.grad(lambda t, s=s: losses(t)[s])(tr) for s in range(num_tasks)]

    per_task = step_grads(trunk)
    for s, own in enumerate(own_grads(trunk)):
        chex.assert_trees_all_close(
            jax.tree.map(lambda g, s=s: g[s], per_task), own, atol=1e-6, rtol=1e-5
        )


def test_adapters_start_as_the_base_model():
    """B = 0 at init: the adapted encoder computes what the plain one does with the same
    weights (BERT here; the decoder's case is the LM trunk tests' step 0)."""
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2, layer_norm_eps=1e-12,
    )  # fmt: skip
    ids = jnp.asarray(np.random.default_rng(1).integers(1, 50, (3, 12)), jnp.int32)
    mask = jnp.ones_like(ids).at[0, 8:].set(0)
    lora = LoRAConfig(rank=4, targets=("q_proj", "v_proj", "down_proj"), task_sets=2, layers=1)
    adapted = BertEncoder(config, lora=lora)
    params = adapted.init(jax.random.PRNGKey(0), ids, mask, task=1)["params"]
    names = _flat(params)
    assert "layer_1/query/lora_a" in names and "layer_1/output/lora_task_b" in names
    assert not any(p.startswith("layer_0/") and "lora" in p for p in names)  # top layer only
    base = jax.tree.map(
        lambda x: x, traverse_util.unflatten_dict(
            {p: v for p, v in names.items() if "lora" not in p}, sep="/"
        )
    )  # fmt: skip
    np.testing.assert_allclose(
        adapted.apply({"params": params}, ids, mask, task=1),
        BertEncoder(config).apply({"params": base}, ids, mask),
        atol=1e-6,
    )


def test_rematerialised_decoder_has_the_same_parameters_and_gradients():
    from mtl_jax.text.decoder import DecoderConfig, DecoderLM

    config = DecoderConfig(**lm_lib.PRESETS["tiny-qwen2"])
    lora = LoRAConfig(task_sets=2, targets=("q_proj", "down_proj"))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 250, (2, 16)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 9:].set(0)
    plain, remat = DecoderLM(config, lora), DecoderLM(config, lora, remat=True)
    params = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), ids, mask, task=1)["params"])
    flat = _flat(params)
    for p in flat:  # B != 0, so every adapter has a gradient
        if "lora_" in p and p.endswith("_b"):
            flat[p] = np.full(flat[p].shape, 0.01, np.float32)
    params = traverse_util.unflatten_dict(flat, sep="/")
    remat_params = nn.meta.unbox(remat.init(jax.random.PRNGKey(0), ids, mask, task=1)["params"])
    assert jax.tree.structure(remat_params) == jax.tree.structure(params)

    def loss(module):
        return lambda p: module.apply({"params": p}, ids, mask, task=1)[:, 5].sum()

    chex.assert_trees_all_close(
        jax.jit(jax.grad(loss(remat)))(params),
        jax.jit(jax.grad(loss(plain)))(params),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.slow
def test_movielens_llm_smoke_run_resumes_exactly(tmp_path):
    """The tiny-decoder MovieLens run: 8 steps straight == 4, stop, resume for 4 (one
    validation, at the end: scoring every rating through the LM is most of this test)."""
    from configs import movielens

    config = movielens.get_config("llm_smoke")
    config.train.update(num_steps=8, eval_every=8, checkpoint_every=8, log_every=2)
    config.llm.max_tokens = 24  # evaluating every rating through the LM dominates this test
    config.train.eval_batch_size = 2048
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert train_and_evaluate(config, str(tmp_path / "split"), max_steps_this_run=4) is None
    resumed = train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed["test"] == straight["test"]
    assert np.isfinite(straight["test"]["rating"]["rmse"])
    trainer = Trainer(config, load_run_dataset(config), mesh=parallel.make_mesh(1))

    def final_params(workdir):
        ckpt = checkpoint.Checkpointer(workdir)
        state, _ = ckpt.restore(
            ckpt.latest_step(), trainer.abstract_state, trainer.train_iterator()
        )
        ckpt.close()
        return jax.device_get(state.params)

    chex.assert_trees_all_equal(
        final_params(tmp_path / "split"), final_params(tmp_path / "straight")
    )


def _byte_level_tokenizer(path: pathlib.Path, extra_tokens: int = 0) -> None:
    """A byte-level BPE without merges (each byte one token), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab.update({f"<extra_{i}>": len(vocab) + i for i in range(extra_tokens)})
    tokenizer = Tokenizer(models.BPE(vocab, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.save(str(path))


def test_a_decoder_directory_trains_with_its_weights_and_tokenizer(tmp_path):
    """A Hugging Face Qwen2 directory (the shared reference, plus a tokenizer.json) as the
    trunk: its weights are what the trunk starts from, and a step trains."""
    source = DECODERS / "qwen2"
    if not (source / "model.safetensors").is_file():
        pytest.skip(f"shared reference {source} absent (only in the development checkout)")
    directory = tmp_path / "qwen2"
    shutil.copytree(source, directory)
    _byte_level_tokenizer(directory / "tokenizer.json")
    config = _lm_config()
    config.llm.preset = ""
    config.text.model_dir = str(directory)
    trainer = Trainer(config, load_run_dataset(config), mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    from mtl_jax.text.decoder import DecoderConfig, load_params

    reference = load_params(directory, DecoderConfig.from_json(directory / "config.json"))
    assert "lm_head" in reference  # untied: the trunk leaves the LM head out
    del reference["lm_head"]
    got = _flat(state.params["trunk"]["lm"])
    for p, want in traverse_util.flatten_dict(reference, sep="/").items():
        np.testing.assert_array_equal(got[p], want, err_msg=p)
    batch = next(trainer.train_iterator(num_steps=1))
    assert batch["features"][PROMPT].max() < 384 and batch["features"][PROMPT_LENGTH].min() > 5
    state, metrics = trainer.train_step(state, parallel.to_global_batch(batch, trainer.mesh))
    assert bool(metrics["applied"]) and np.isfinite(float(metrics["loss"]))


def _write_config(directory: pathlib.Path, **fields) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shape = {k: v for k, v in lm_lib.PRESETS["tiny-llama"].items() if k != "attention_bias"}
    (directory / "config.json").write_text(json.dumps({**shape, **fields}))


def test_bad_model_files_are_named(tmp_path):
    with pytest.raises(DecoderFilesError, match="no config.json"):
        lm_lib.language_model(str(tmp_path / "empty"), "")
    _write_config(tmp_path / "gpt2", model_type="gpt2")
    with pytest.raises(DecoderFilesError, match="model_type 'gpt2' is not supported"):
        lm_lib.language_model(str(tmp_path / "gpt2"), "")
    _write_config(tmp_path / "notok", vocab_size=300)
    with pytest.raises(DecoderFilesError, match="no tokenizer.json"):
        _ = lm_lib.language_model(str(tmp_path / "notok"), "").tokenizer
    _write_config(tmp_path / "small", vocab_size=100)
    _byte_level_tokenizer(tmp_path / "small" / "tokenizer.json")
    with pytest.raises(UserError, match="tokenizer has 256 tokens but the model's embedding"):
        _ = lm_lib.language_model(str(tmp_path / "small"), "").tokenizer
    _write_config(tmp_path / "noweights", vocab_size=300)
    _byte_level_tokenizer(tmp_path / "noweights" / "tokenizer.json", extra_tokens=10)
    with pytest.raises(DecoderFilesError, match="no model.safetensors"):
        lm_lib.language_model(str(tmp_path / "noweights"), "").pretrained_params()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("llm.preset", "gpt-5", "llm.preset: 'gpt-5'; valid"),
        ("llm.pooling", "max", "llm.pooling: 'max'; valid"),
        ("llm.lora.targets", ("q_proj", "wq"), "llm.lora.targets"),
        ("ranking.enabled", True, "ranking.enabled: top-k over the catalogue"),
        ("optim.sparse_embedding_updates", True, "optim.sparse_embedding_updates"),
    ],
)
def test_bad_llm_config_values_are_named(key, value, message):
    from mtl_jax import configlib

    config = _lm_config()
    section, _, leaf = key.rpartition(".")
    node = config
    for part in section.split("."):
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        configlib.validate(config)


def test_compile_only_on_a_4x2_mesh_reports_per_device_memory():
    from mtl_jax.aot import compile_train_step

    config = _lm_config()
    config.mesh.axis_rules = {**dict(config.mesh.axis_rules), "mlp_out": "model"}
    report = compile_train_step(config, 8, 2)
    assert report["mesh"] == {"data": 4, "model": 2}
    assert report["arguments_mib"] > 0 and report["temporaries_mib"] > 0
