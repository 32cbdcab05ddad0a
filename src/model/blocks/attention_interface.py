"""What the two sparse-attention implementations share: the pattern interface and the key epsilon.

``model.blocks.sparse_attention`` (fast) and ``model.blocks.sparse_attention_reference`` (plain, the tests'
oracle) each provide ``build_pattern(embed, codes, window_size) -> pattern`` and
``apply_pattern(pattern, values) -> Tensor``. A pattern is opaque to its users: it goes back, unchanged,
into ``apply_pattern`` of the implementation that built it, once per residual group (collaborative
attention). Its only shared attribute is ``weights``, whose layout is the implementation's own.
"""

from typing import Protocol, TypeVar, runtime_checkable

from torch import Tensor

# Epsilon of the keys' L2 normalisation (``F.normalize(..., eps=KEY_NORM_EPS)``), the official value.
KEY_NORM_EPS = 5e-5


@runtime_checkable
class Pattern(Protocol):
    """A learnable sparse pattern: built once from the embeddings, applied to any number of values
    of the same batch size and length."""

    @property
    def weights(self) -> Tensor:
        """Softmax weights of every position over its window's keys, in float32 or wider; they carry the
        gradient back to the embeddings. The tensor layout belongs to the implementation."""
        ...


P = TypeVar('P', bound=Pattern)


class SparseAttention(Protocol[P]):
    """A sparse-attention implementation (a module providing these two functions)."""

    def build_pattern(self, embed: Tensor, codes: Tensor, window_size: int) -> P:
        """The pattern of ``embed`` (N, L, C) given each position's cluster per round, ``codes`` (N, R, L)."""
        ...

    def apply_pattern(self, pattern: P, values: Tensor) -> Tensor:
        """``values`` (N, L, Cv) attended with ``pattern`` (same N and L), rounds combined: (N, L, Cv)."""
        ...
