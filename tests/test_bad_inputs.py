"""Bad input, table-driven: every rejected config value or config file is a ``ConfigError``
naming the key and what is allowed, raised before anything is built or written.

Data files: tests/test_movielens.py; checkpoints: tests/test_checkpoint_integrity.py;
workdir ownership: tests/test_workdir.py; non-finite and diverging training:
tests/test_guards.py; signals: tests/test_run_cli.py.
"""

import math
import pathlib
import subprocess
import sys

import pytest

from configs import mmoe_synthetic, movielens, news, social
from mtl_jax import configlib
from mtl_jax.configlib import ConfigError
from mtl_jax.data import load_dataset
from tests.helpers import subprocess_env, tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAN, INF = math.nan, math.inf


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


# (dotted key, value, what the message must contain)
ECOMMERCE_CASES = [
    ("optim.learning_rate", INF, "config.optim.learning_rate: must be a finite number"),
    ("optim.learning_rate", NAN, "config.optim.learning_rate: must be a finite number"),
    ("optim.learning_rate", -1.0, "config.optim.learning_rate: must lie in (0, inf)"),
    ("optim.learning_rate", 0.0, "config.optim.learning_rate: must lie in (0, inf)"),
    ("optim.embedding_learning_rate", INF, "config.optim.embedding_learning_rate: must be a"),
    ("optim.b1", 5.0, "config.optim.b1: must lie in [0, 1), got 5.0"),
    ("optim.b1", 1.0, "config.optim.b1: must lie in [0, 1)"),
    ("optim.b2", -0.1, "config.optim.b2: must lie in [0, 1)"),
    ("optim.weight_decay", -1.0, "config.optim.weight_decay: must lie in [0, inf)"),
    ("optim.grad_clip_norm", NAN, "config.optim.grad_clip_norm: must be a finite number"),
    ("optim.embedding_l2", -0.5, "config.optim.embedding_l2: must lie in [0, inf)"),
    ("optim.warmup_steps", -1, "config.optim.warmup_steps: must be >= 0"),
    ("optim.embedding_optimizer", "sgdd", "config.optim.embedding_optimizer: 'sgdd'; valid"),
    ("balancing.weights.click", NAN, "config.balancing.weights.click: must be a finite"),
    ("balancing.weights.click", -1.0, "config.balancing.weights.click: must lie in [0, inf)"),
    ("balancing.method", "pcgradd", "config.balancing.method: unknown method 'pcgradd'"),
    ("balancing.gramian_params", "experts/(", "only Gramian-based gradient methods"),
    ("balancing.task_gradients", "parallel", "config.balancing.task_gradients: 'parallel'; v"),
    ("balancing.gramian_at", "rep", "config.balancing.gramian_at: 'rep'; valid: ('trunk', "),
    ("balancing.gramian_at", "representation", "'representation' is for Gramian-based gradi"),
    ("task_loss.click.pos_weight", NAN, "config.task_loss.click.pos_weight: must be a finite"),
    ("task_loss.click.pos_weight", 0.0, "config.task_loss.click.pos_weight: must lie in (0,"),
    ("task_loss.click.focal_gamma", -1.0, "config.task_loss.click.focal_gamma: must lie in"),
    ("task_loss.click.negative_rate", 0.0, "config.task_loss.click.negative_rate: must lie"),
    ("task_loss.click.negative_rate", 1.5, "config.task_loss.click.negative_rate: must lie"),
    ("task_loss.category.class_weights", (1.0, 0.0), "class_weights: every class weight must"),
    ("task_loss.category.class_weights", (1.0, NAN), "class_weights[1]: must be a finite"),
    ("data.val_fraction", 0.0, "config.data.val_fraction: must lie in (0, 1), got 0.0"),
    ("data.test_fraction", 1.0, "config.data.test_fraction: must lie in (0, 1)"),
    ("data.val_fraction", 0.95, "val_fraction + test_fraction must be < 1"),
    ("data.num_users", 0, "config.data.num_users: must lie in [1, inf), got 0"),
    ("data.num_impressions", -5, "config.data.num_impressions: must lie in [1, inf)"),
    ("data.click_rate", 0.0, "config.data.click_rate: must lie in (0, 1)"),
    ("data.click_rate", 1.2, "config.data.click_rate: must lie in (0, 1)"),
    ("data.purchase_given_click", 1.0, "config.data.purchase_given_click: must lie in (0, 1)"),
    ("data.task_correlation", 2.0, "config.data.task_correlation: must lie in [-1, 1]"),
    ("data.latent_dim", 0, "config.data.latent_dim: must lie in [1, inf)"),
    ("data.rating_noise", -1.0, "config.data.rating_noise: must lie in [0, inf)"),
    ("data.signal_scale", INF, "config.data.signal_scale: must be a finite number"),
    ("data.name", "criteo", "config.data.name: 'criteo'; valid"),
    ("model.dropout", 1.0, "config.model.dropout: must lie in [0, 1)"),
    ("model.embed_dim", 0, "config.model.embed_dim: must be >= 1"),
    ("model.trunk", "transformer", "config.model.trunk: unknown trunk 'transformer'; valid"),
    ("model.trunk_hidden", (), "config.model.trunk_hidden: needs at least one layer"),
    ("model.trunk_hidden", (32, 0), "config.model.trunk_hidden: every width must be a posit"),
    ("model.num_experts", 0, "config.model.num_experts: must be >= 1"),
    ("model.cross_stitch_self_weight", 2.0, "config.model.cross_stitch_self_weight: must lie"),
    ("model.id_dropout", -0.1, "config.model.id_dropout: must lie in [0, 1)"),
    ("train.batch_size", 0, "config.train.batch_size: must be >= 1"),
    ("train.num_steps", 0, "config.train.num_steps: must be >= 1"),
    ("train.checkpoint_every", 15, "config.train.checkpoint_every: must be a positive multi"),
    ("train.patience", 0, "config.train.patience: must be >= 1"),
    ("guards.max_skipped_steps", -1, "config.guards.max_skipped_steps: must be an int >= 0"),
    ("guards.divergence_factor", 0.5, "config.guards.divergence_factor: must be 0 (off)"),
    ("guards.divergence_factor", INF, "config.guards.divergence_factor: must be a finite"),
    ("guards.divergence_window", 0, "config.guards.divergence_window: must be >= 1"),
    ("mesh.model", 0, "config.mesh.model: must be >= 1"),
    ("mesh.num_devices", -1, "config.mesh.num_devices: must be >= 0"),
    ("text.mode", "thawed", "config.text.mode: unknown mode 'thawed'"),
    ("text.features", ("zip",), "config.text.features: no text for 'zip'"),
    ("text.finetune_learning_rate", 0.0, "config.text.finetune_learning_rate: must be > 0"),
    ("distill.alpha", 2.0, "config.distill.alpha: must lie in [0, 1]"),
    ("distill.temperature", 0.0, "config.distill.temperature: must be > 0"),
    ("cv.folds", 1, "config.cv: folds must be 0 (off) or >= 2"),
    ("regularization.l1.trunk", -1.0, "config.regularization.l1.trunk: must be >= 0"),
    ("regularization.embedding_norm", NAN, "config.regularization.embedding_norm: must be a"),
    ("tasks", (), "config.tasks: needs at least one task"),
    ("tasks", ("click", "click"), "config.tasks: duplicates"),
]


@pytest.mark.parametrize(
    "key, value, expected", ECOMMERCE_CASES, ids=[f"{k}={v}" for k, v, _ in ECOMMERCE_CASES]
)
def test_bad_config_value_is_named(key, value, expected):
    config = tiny_config()
    _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        configlib.validate(config)
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value), "one line"


OTHER_DATASET_CASES = [
    (movielens, "data.data_dir", "/no/such/movielens", "config.data.data_dir: '/no/such"),
    (movielens, "data.cold_item_fraction", 0.7, "config.data.cold_item_fraction: must lie in"),
    (mmoe_synthetic, "data.correlation", 1.5, "config.data.correlation: must lie in [-1, 1]"),
    (mmoe_synthetic, "data.noise_std", NAN, "config.data.noise_std: must be a finite number"),
    (mmoe_synthetic, "data.num_train", 0, "config.data.num_train: must lie in [1, inf)"),
    (mmoe_synthetic, "data.dim", 0, "config.data.dim: must lie in [1, inf)"),
    (news, "data.click_rate", 0.0, "config.data.click_rate: must lie in (0, 1)"),
    (news, "data.position_decay", -2.0, "config.data.position_decay: must lie in [0, inf)"),
    (social, "data.like_rate", -0.1, "config.data.like_rate: must lie in (0, 1)"),
    (social, "data.topic_affinity", -1.0, "config.data.topic_affinity: must lie in [0, inf)"),
]


@pytest.mark.parametrize(
    "module, key, value, expected",
    OTHER_DATASET_CASES,
    ids=[f"{m.__name__.split('.')[-1]}:{k}={v}" for m, k, v, _ in OTHER_DATASET_CASES],
)
def test_bad_data_section_value_of_every_dataset_is_named(module, key, value, expected):
    config = module.get_config("smoke")
    _set(config, key, value)
    with pytest.raises(ConfigError, match=None) as err:
        configlib.validate(config)
    assert expected in str(err.value), str(err.value)


@pytest.fixture(scope="module")
def dataset():
    config = tiny_config()
    return load_dataset(config.data, config.seed)


DATASET_CASES = [
    ("tasks", ("click", "like"), "config.tasks: unknown task 'like'; valid"),
    ("input_features", ("user_id", "colour"), "config.input_features: unknown feature 'colour'"),
    ("input_features", ("user_id", "category"), "'category' is also a prediction target"),
    ("train.early_stopping_metric", "click/rmse", "config.train.early_stopping_metric: 'click/"),
    ("train.early_stopping_metric", "ctr/auc", "config.train.early_stopping_metric: 'ctr/auc'"),
    ("model.esmm_ctr_task", "rating", "ESMM needs two different binary tasks"),
    ("task_loss.rating.pos_weight", 2.0, "pos_weight applies to binary and multilabel"),
    ("task_loss.category.class_weights", (1.0, 2.0), "one weight per class"),
    ("ranking.enabled", True, "config.ranking: relevance_task '' must be a binary task"),
]


@pytest.mark.parametrize(
    "key, value, expected", DATASET_CASES, ids=[f"{k}={v}" for k, v, _ in DATASET_CASES]
)
def test_config_names_checked_against_the_dataset(dataset, key, value, expected):
    config = tiny_config()
    _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        configlib.validate(config)
        configlib.validate_against_dataset(config, dataset)
    assert expected in str(err.value), str(err.value)


def test_static_weights_follow_the_configured_tasks(dataset):
    """Fewer tasks than the config file lists: the untouched default weights of the dropped
    tasks are ignored; a weight the user set for a dropped task is an error."""
    config = tiny_config()
    config.tasks = ("click", "purchase")
    config.train.early_stopping_metric = "click/auc"
    config.balancing.method = "static"
    configlib.validate(config)
    configlib.validate_against_dataset(config, dataset)
    config.balancing.weights.rating = 2.0
    with pytest.raises(ConfigError, match=r"weights for tasks \['rating'\] that this run does not"):
        configlib.validate_against_dataset(config, dataset)
    config.balancing.weights.rating = 1.0
    config.balancing.weights.click = 0.0
    config.balancing.weights.purchase = 0.0
    with pytest.raises(ConfigError, match="are all 0: nothing would train"):
        configlib.validate(config)


CONFIG_FILES = {
    "noget.py": ("x = 1\n", "defines no get_config(arg=None) function"),
    "syntax.py": ("def get_config(:\n", "does not load: SyntaxError"),
    "raises.py": ("raise ImportError('no module named foo')\n", "does not load: ImportError"),
    "returns_dict.py": ("def get_config(arg=None):\n    return {}\n", "returned dict, not an"),
    "variant.py": (
        "def get_config(arg=None):\n    raise ValueError(f'unknown variant {arg!r}')\n",
        "unknown variant 'x'",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_bad_config_file_is_named(tmp_path, name):
    text, expected = CONFIG_FILES[name]
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        configlib.load_config_file(f"{tmp_path / name}:x")
    assert expected in str(err.value) and name in str(err.value), str(err.value)


def test_missing_config_file_and_unknown_override_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no config file at"):
        configlib.load_config_file(str(tmp_path / "absent.py"))
    config = tiny_config()
    for flag, expected in [
        ("--config.model.num_expert=8", "unknown config key config.model.num_expert"),
        ("--config.trian.num_steps=8", "Did you mean 'train'?"),
        ("--config.model.trunk.depth=2", "valid keys of config.model.trunk: (none: it is a"),
        ("--config.guards.max_skiped_steps=3", "Did you mean 'max_skipped_steps'?"),
    ]:
        with pytest.raises(ConfigError, match=None) as err:
            configlib.check_override_keys(config, [flag])
        assert expected in str(err.value), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--config.optim.learning_rate=inf"], "error: config.optim.learning_rate: must be a fin"),
        (["--config.optim.b1=5"], "error: config.optim.b1: must lie in [0, 1), got 5.0"),
        (["--config.data.val_fraction=0"], "error: config.data.val_fraction: must lie in (0, 1)"),
        (["--config.tasks=('click','like')"], "error: config.tasks: unknown task 'like'"),
    ],
)
def test_run_py_prints_one_line_and_exits_2_with_nothing_written(tmp_path, flags, expected):
    env = subprocess_env()
    cmd = [
        sys.executable,
        "run.py",
        "--config=configs/ecommerce.py:smoke",
        "--config.data.num_impressions=3000",
        f"--workdir={tmp_path / 'w'}",
        *flags,
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    written = (
        sorted(p.name for p in (tmp_path / "w").iterdir()) if (tmp_path / "w").exists() else []
    )
    assert set(written) <= {".lock"}, written


def test_a_dataset_builder_refusing_its_arguments_is_a_config_error():
    from mtl_jax.trainer import load_run_dataset

    config = tiny_config()
    config.data.num_categories = 500
    with pytest.raises(ConfigError, match=r"config.data \(ecommerce\): num_categories must be"):
        load_run_dataset(config)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("mesh.num_devices", 64, "config.mesh: num_devices=64 but 8 devices exist"),
        ("train.batch_size", 60, "config.train.batch_size 60 does not divide over 8 devices"),
        ("train.eval_batch_size", 250, "config.train.eval_batch_size 250 does not divide"),
    ],
)
def test_a_mesh_or_batch_that_does_not_fit_the_devices_is_a_config_error(
    dataset, key, value, expected
):
    from mtl_jax.trainer import Trainer

    config = tiny_config()
    _set(config, key, value)
    with pytest.raises(ConfigError, match=None) as err:
        Trainer(config, dataset)
    assert expected in str(err.value), str(err.value)
