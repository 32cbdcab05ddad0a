"""Non-Local Sparse Attention (NLSA), the attention of NLSN (Mei et al., "Image Super-Resolution with
Non-Local Sparse Attention", CVPR 2021).

Each position's embedding is hashed by spherical locality-sensitive hashing (a random rotation,
then the argmax over the rotated vector and its negation), positions are sorted by hash bucket,
the sorted sequence is cut into chunks of ``chunk_size``, and every chunk attends to itself and its
two neighbouring chunks (cyclically). This runs ``n_hashes`` times with independent rotations; the
rounds are combined with softmax weights of their log-sum-exp scores.

Compatibility with the official code (``attention.py`` of the NLSN repository):

- Same parameters and keys (``conv_match.0``, ``conv_assembly.0``) and the same arithmetic,
  including the number of buckets ``min(L // chunk_size rounded up to even, 128)``, the padding of
  the last chunk with copies of the last sorted positions, and the cyclic neighbours.
- Random rotations: every forward draws one ``torch.randn((1, C // reduction, n_hashes, buckets // 2))``
  from torch's global generator, in the embedding's dtype and on its device, shared by all images
  of the batch; the modules of a network draw in the order they run. So after
  ``torch.manual_seed(s)`` our NLSN and the official one draw the same rotations and, for the same
  weights and input, give the same output.
- Positions with the same hash code are ordered by ``torch.sort`` of the round-offset codes, the
  call the official code makes (not a stable sort): the tie order is part of the result, and this
  keeps it identical on the same device and PyTorch version. On one device it is deterministic.

Beyond the official code, any input size works: with fewer positions than one chunk (where the
official code fails) there is no hashing (no buckets, and a zero-size rotation draw that consumes no
random numbers) and every position attends to all positions.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import common

MAX_BUCKETS = 128
# eps of the L2 normalisation of the keys (the official value).
KEY_NORM_EPS = 5e-5


def n_buckets(length: int, chunk_size: int) -> int:
    """Hash buckets for ``length`` positions: about one per chunk, even, at most ``MAX_BUCKETS``; 0 below one chunk."""
    chunks = length // chunk_size
    return min(chunks + chunks % 2, MAX_BUCKETS)


def _with_neighbours(chunks: Tensor) -> Tensor:
    """(..., K, chunk, D) -> (..., K, 3 * chunk, D): each chunk, then the previous and the next one (cyclic)."""
    return torch.cat([chunks, chunks.roll(1, dims=-3), chunks.roll(-1, dims=-3)], dim=-2)


class NonLocalSparseAttention(nn.Module):
    """``x + res_scale * NLSA(x)`` on a feature map (N, channels, H, W).

    Args:
        channels: feature channels of input and output.
        chunk_size: positions per attention chunk.
        n_hashes: LSH rounds.
        reduction: the matching embedding has ``channels // reduction`` channels.
        res_scale: scale of the attention's output before the skip connection.
    """

    def __init__(self, *, channels: int, chunk_size: int = 144, n_hashes: int = 4, reduction: int = 4,
                 res_scale: float = 1.0) -> None:
        super().__init__()
        if chunk_size < 1 or n_hashes < 1 or reduction < 1 or channels % reduction:
            raise ValueError(f'need chunk_size, n_hashes >= 1 and reduction dividing channels; got chunk_size '
                             f'{chunk_size}, n_hashes {n_hashes}, reduction {reduction}, channels {channels}')
        self.chunk_size = chunk_size
        self.n_hashes = n_hashes
        self.reduction = reduction
        self.res_scale = res_scale
        self.conv_match = common.BasicBlock(in_channels=channels, out_channels=channels // reduction, kernel_size=3)
        self.conv_assembly = common.BasicBlock(in_channels=channels, out_channels=channels, kernel_size=1)

    def hash_codes(self, match: Tensor) -> Tensor:
        """Bucket of every position in every round, offset by ``round * buckets``: (N, L, D) -> (N, n_hashes * L)."""
        n, length, dim = match.shape
        buckets = n_buckets(length, self.chunk_size)
        # Drawn exactly as the official code draws them (see the module docstring).
        rotations = torch.randn((1, dim, self.n_hashes, buckets // 2), dtype=match.dtype, device=match.device)
        rounds = torch.arange(self.n_hashes, device=match.device).view(1, -1, 1)
        if buckets == 0:  # fewer positions than one chunk: one bucket per round
            return rounds.expand(n, -1, length).reshape(n, -1)
        rotated = torch.einsum('ntd,dri->nrti', match, rotations[0])
        codes = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)
        return (codes + rounds * buckets).reshape(n, -1)

    def forward(self, x: Tensor) -> Tensor:
        n, channels, h, w = x.shape
        length, rounds = h * w, self.n_hashes
        # (N, L, D) position-major views; free for channels-last feature maps.
        match = self.conv_match(x).permute(0, 2, 3, 1).reshape(n, length, -1)
        values = self.conv_assembly(x).permute(0, 2, 3, 1).reshape(n, length, channels)

        with torch.no_grad():
            order = self.hash_codes(match.detach()).sort(dim=-1).indices  # (N, rounds * L), grouped by round
            undo = torch.empty_like(order).scatter_(
                1, order, torch.arange(order.shape[1], device=order.device).expand(n, -1))
            position = order % length

            # The last chunk is filled up with copies of the last sorted positions: padded slot j >= L of a
            # round reads sorted slot j - padding. Folding that into the sort's gather costs nothing and
            # keeps the padding free of data-dependent branches (ONNX export with dynamic H, W).
            chunk = min(self.chunk_size, length)
            padding = -length % chunk
            slot = torch.arange(length + padding, device=x.device)
            slot = torch.where(slot < length, slot, slot - padding)
            position = position.view(n, rounds, length).index_select(2, slot).view(n, -1)

        def sort(t: Tensor) -> Tensor:
            gathered = t.gather(1, position.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            return gathered.view(n, rounds, -1, chunk, t.shape[-1])  # (N, rounds, chunks, chunk, D)

        query, value = sort(match), sort(values)
        key = _with_neighbours(F.normalize(query, p=2, dim=-1, eps=KEY_NORM_EPS))
        value = _with_neighbours(value)

        # Softmax statistics in float32 also under autocast (they weigh the rounds, too).
        score = (query @ key.transpose(-1, -2)).float()  # (N, rounds, chunks, chunk, 3 * chunk)
        log_norm = score.logsumexp(dim=-1, keepdim=True)
        out = (score - log_norm).exp().to(value.dtype) @ value  # (N, rounds, chunks, chunk, C)
        del score

        # Undo padding and sort, then weigh the rounds by how much each position's chunk matched.
        out = out.reshape(n, rounds, -1, channels)[:, :, :length].reshape(n, rounds * length, channels)
        log_norm = log_norm.reshape(n, rounds, -1)[:, :, :length].reshape(n, rounds * length)
        out = out.gather(1, undo.unsqueeze(-1).expand(-1, -1, channels)).view(n, rounds, length, channels)
        weight = log_norm.gather(1, undo).view(n, rounds, length, 1).softmax(dim=1)
        out = (out * weight).sum(dim=1)
        return out.view(n, h, w, channels).permute(0, 3, 1, 2) * self.res_scale + x
