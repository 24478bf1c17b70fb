"""mtl_jax: scalable multi-task learning for recommendation in JAX/Flax."""

__version__ = "0.1.0"
