"""Small building blocks shared by trunks and heads."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense -> ReLU (-> dropout) stack; an empty ``hidden`` is the identity."""

    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.hidden):
            dense = nn.Dense(
                width,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("mlp_in", "mlp_out")
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp_out",)),
                name=f"dense_{i}",
            )
            x = nn.relu(dense(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


class ExpertMLPs(nn.Module):
    """``num_experts`` independent MLPs with their weights stacked: one (E, in, out) kernel per
    layer, the layout sharding rules and checkpoints see.

    Input (B, D), shared by every expert; a sequence of E arrays (B, D), one input per
    expert (PLE's task experts read their own task's representation); or the same stacked,
    (B, E, D) -> output (B, E, H), or with ``as_list`` a list of E arrays (B, H).

    Each expert runs as its own chain of plain 2-D matmuls, (B, D) x (D, W): XLA:CPU runs
    those at its matmul speed in the forward and backward alike, where one batched einsum
    let layout assignment pick an example-minor layout for the first layer and a transposed
    batched matmul for the next (profile.md, finding 6: the MovieLens peer EW step 7.1 ->
    5.5 ms).
    """

    num_experts: int
    hidden: Sequence[int]
    dropout: float = 0.0
    as_list: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array | Sequence[jax.Array], *, train: bool = False
    ) -> jax.Array | list[jax.Array]:
        init = nn.with_logical_partitioning(
            nn.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
            ),
            ("expert", "mlp_in", "mlp_out"),
        )
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("expert", "mlp_out"))
        if isinstance(x, (list, tuple)):
            if len(x) != self.num_experts:
                raise ValueError(f"{len(x)} per-expert inputs for {self.num_experts} experts")
            inputs = list(x)
        elif x.ndim == 2:
            inputs = [x] * self.num_experts
        elif x.shape[1] != self.num_experts:
            raise ValueError(f"per-expert input {x.shape} does not have {self.num_experts} experts")
        else:
            inputs = [x[:, e] for e in range(self.num_experts)]
        layers, width_in = [], inputs[0].shape[-1]
        for i, width in enumerate(self.hidden):
            kernel = self.param(f"kernel_{i}", init, (self.num_experts, width_in, width))
            layers.append((kernel, self.param(f"bias_{i}", bias_init, (self.num_experts, width))))
            width_in = width
        drop = nn.Dropout(self.dropout, deterministic=not train) if self.dropout > 0 else None
        outputs = []
        for e, h in enumerate(inputs):
            for kernel, bias in layers:
                h = nn.relu(h @ kernel[e] + bias[e])
                h = drop(h) if drop else h
            outputs.append(h)
        return outputs if self.as_list else jnp.stack(outputs, axis=1)


def mix(weights: jax.Array, outputs: Sequence[jax.Array]) -> jax.Array:
    """``sum_e weights[:, e] * outputs[e]``: a gate's mixture of per-expert outputs (B, H)
    as E scaled adds, one elementwise fusion. As a per-example (E) x (E, H) einsum XLA:CPU
    ran a batched matmul of tiny matrices, several times slower (profile.md, finding 6)."""
    return sum(weights[:, e, None] * h for e, h in enumerate(outputs))
