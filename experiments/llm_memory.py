"""Per-device memory of a LoRA step on a decoder of real LLM shapes, from XLA's estimate of
the compiled step (abstract shapes: no weights needed, nothing runs).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/llm_memory.py

For each shape (Qwen2.5-0.5B and -1.5B as their config.json files describe them) and each
layout on a 4x2 (data x model) mesh, the step is: the decoder forward on a batch of
``--batch`` prompts of ``--length`` tokens (base weights bfloat16, frozen; LoRA adapters of
rank ``--rank`` on q/k/v/o, float32), a loss on the last token's hidden state, and the
adapters' gradient. Layouts: ``tensor`` (``mlp_out`` and ``vocab`` over ``model``: each layer
split Megatron-style) and ``fsdp+tensor`` (additionally ``embed`` over ``data``: the weights
fully sharded). One JSON line per measurement, appended to ``--out``. This measures the
decoder module (mtl_jax/text/decoder.py) as the LLM trunk will use it.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import traverse_util

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_BATCH = flags.DEFINE_integer("batch", 16, "Prompts per step (global).")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per prompt.")
_RANK = flags.DEFINE_integer("rank", 16, "LoRA rank.")
_SHAPES = flags.DEFINE_list("shapes", ["qwen2.5-0.5b", "qwen2.5-1.5b"], "Model shapes.")
_MESH = flags.DEFINE_string("mesh", "4x2", "DATAxMODEL.")
_OUT = flags.DEFINE_string(
    "out", str(ROOT / "experiments" / "results" / "llm.jsonl"), "JSONL to append to."
)

# The fields of Qwen/Qwen2.5-{0.5B,1.5B}/config.json the architecture reads.
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
}  # fmt: skip
LAYOUTS = {
    "tensor": {"mlp_out": "model", "vocab": "model"},
    "fsdp+tensor": {"mlp_out": "model", "vocab": "model", "embed": "data"},
}


def measure(shape: str, layout: str) -> dict:
    from mtl_jax import benchmark, parallel
    from mtl_jax.text.decoder import DecoderConfig, DecoderLM, LoRAConfig

    s = SHAPES[shape]
    config = DecoderConfig(
        model_type="qwen2", vocab_size=151936,
        head_dim=s["hidden_size"] // s["num_attention_heads"],
        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768, attention_bias=True,
        tie_word_embeddings=True, **s,
    )  # fmt: skip
    lora = LoRAConfig(rank=_RANK.value, alpha=2.0 * _RANK.value,
                      targets=("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
    model = DecoderLM(config, lora)
    num, model_axis = parallel.parse_mesh_shape(_MESH.value)
    mesh = parallel.make_mesh(num, model=model_axis)
    ids = jax.ShapeDtypeStruct((_BATCH.value, _LENGTH.value), jnp.int32)
    init = lambda key, tokens: model.init(key, tokens, tokens)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0), ids)["params"]
    rules = {**parallel.DEFAULT_AXIS_RULES, **LAYOUTS[layout]}
    shardings = traverse_util.flatten_dict(parallel.param_shardings(boxed, mesh, rules))
    unboxed = jax.tree.map(lambda b: b.value if _boxed(b) else b, boxed, is_leaf=_boxed)
    abstract = traverse_util.flatten_dict(unboxed)
    is_lora = lambda path: path[-1].startswith("lora")
    lora_keys = [p for p in abstract if is_lora(p)]
    base_keys = [p for p in abstract if not is_lora(p)]

    def loss(adapters, base, ids, mask):
        params = traverse_util.unflatten_dict({**base, **adapters})
        hidden = model.apply({"params": params}, ids, mask)
        return jnp.mean(jnp.square(hidden[:, -1].astype(jnp.float32)))

    def pick(keys, dtype=None):
        return {
            k: jax.ShapeDtypeStruct(
                abstract[k].shape, dtype or abstract[k].dtype, sharding=shardings[k]
            )
            for k in keys
        }

    batch = parallel.batch_sharding(mesh)
    ids_in = jax.ShapeDtypeStruct(ids.shape, ids.dtype, sharding=batch)
    step = jax.jit(jax.grad(loss), out_shardings={k: shardings[k] for k in lora_keys})
    start = time.perf_counter()
    compiled = step.lower(pick(lora_keys), pick(base_keys, jnp.bfloat16), ids_in, ids_in).compile()
    memory = benchmark.memory_mib(compiled) or {}
    count = lambda keys: int(sum(int(jnp.prod(jnp.array(abstract[k].shape))) for k in keys))
    return {
        "shape": shape, "layout": layout, "mesh": _MESH.value, "batch": _BATCH.value,
        "length": _LENGTH.value, "lora_rank": _RANK.value, "base_params": count(base_keys),
        "lora_params": count(lora_keys), "compile_s": time.perf_counter() - start, **memory,
    }  # fmt: skip


def _boxed(x) -> bool:
    import flax.linen as nn

    return isinstance(x, nn.LogicallyPartitioned)


def main(argv):
    del argv
    from mtl_jax import reporting

    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"benchmark": "llm_memory", "device_kind": jax.devices()[0].device_kind,
              "jax": jax.__version__, "commit": reporting.git_commit()}  # fmt: skip
    for shape in _SHAPES.value:
        for layout in LAYOUTS:
            line = json.dumps({**header, **measure(shape, layout)})
            print(line, flush=True)
            with out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
