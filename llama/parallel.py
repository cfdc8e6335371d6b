"""Linear/embedding factories: plain torch layers for one shard, fairscale's for several.

Model-parallel size 1 must work without any process group (plain ``python`` on a laptop), so
fairscale is imported only when its model-parallel groups have been initialised.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn


# The torch.nn.init functions that torch's layers call in reset_parameters.
_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_")


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    """Build layers without their random initialisation: the weights come from a checkpoint.

    On the meta device torch runs that init through its reference implementations, and their first
    use imports ``torch._dynamo``: about a second of every run's start-up, for numbers nobody reads.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def model_parallel_size() -> int:
    try:
        from fairscale.nn.model_parallel import initialize as fs_init
    except ImportError:  # pragma: no cover - fairscale is a requirement
        return 1
    if not fs_init.model_parallel_is_initialized():
        return 1
    return fs_init.get_model_parallel_world_size()


def _identity_init(weight):
    # Weights always come from a checkpoint; skip random initialisation.
    return weight


@contextlib.contextmanager
def _no_master_weight() -> Iterator[None]:
    """Skip fairscale's init, which builds the full unsharded matrix and copies a slice of it.

    Weights come from a checkpoint (loaded with assign=True), so that copy is wasted memory, and
    on the meta device it fails: fairscale allocates the shard with the legacy ``torch.Tensor``
    constructor, which ignores the device context.
    """
    from fairscale.nn.model_parallel import layers

    saved = layers._initialize_affine_weight
    layers._initialize_affine_weight = lambda *args, **kwargs: None
    try:
        yield
    finally:
        layers._initialize_affine_weight = saved


def column_linear(in_features: int, out_features: int, gather_output: bool = False) -> nn.Module:
    """Output features split across model-parallel ranks (wq/wk/wv, w1/w3, output)."""
    if model_parallel_size() == 1:
        return nn.Linear(in_features, out_features, bias=False)
    from fairscale.nn.model_parallel.layers import ColumnParallelLinear

    with _no_master_weight():
        return ColumnParallelLinear(
            in_features, out_features, bias=False, gather_output=gather_output, init_method=_identity_init
        )


def row_linear(in_features: int, out_features: int) -> nn.Module:
    """Input features split across model-parallel ranks (wo, w2); outputs all-reduced."""
    if model_parallel_size() == 1:
        return nn.Linear(in_features, out_features, bias=False)
    from fairscale.nn.model_parallel.layers import RowParallelLinear

    with _no_master_weight():
        return RowParallelLinear(
            in_features, out_features, bias=False, input_is_parallel=True, init_method=_identity_init
        )


def embedding(num_embeddings: int, embedding_dim: int) -> nn.Module:
    if model_parallel_size() == 1:
        return nn.Embedding(num_embeddings, embedding_dim)
    from fairscale.nn.model_parallel.layers import ParallelEmbedding

    with _no_master_weight():
        return ParallelEmbedding(num_embeddings, embedding_dim, init_method=_identity_init)


# Which dimension of each Meta parameter is split across shards (None: replicated).
# Meta's consolidated.NN.pth files follow exactly this layout.
SHARD_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
    "norm.weight": None,
}


def shard_dim(name: str):
    """Split dimension for a full parameter name such as ``layers.3.attention.wq.weight``."""
    for suffix, dim in SHARD_DIM.items():
        if name == suffix or name.endswith("." + suffix):
            return dim
    raise KeyError(f"unknown LLaMA parameter name {name!r}")
