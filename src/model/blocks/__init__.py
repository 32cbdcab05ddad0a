"""The building blocks the architectures of ``model/`` are made of.

``common``: EDSR's convolutions, residual blocks, upsamplers and mean shift; ``lcoa``: the paper's
Learnable Collaborative Attention (k-means sparse pattern, collaborative reuse), whose windowed
attention is ``sparse_attention`` (fast) beside ``sparse_attention_reference`` (the plain reading of
the paper, tested equal) behind ``attention_interface``; ``nlsa``: NLSN's hashed attention;
``lcoa_stats``: what LCoA learns, read from the tensors its forward computes.
"""
