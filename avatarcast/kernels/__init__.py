"""How fast the neural generator runs on a GPU: Triton attention kernels and backend dispatch.

This room imports no other room but ``core`` (its errors), and importing it needs neither
torch nor triton (they are imported inside the functions that use them).

- ``masks``: the frame-block sparsity spec (temporal window + anchors + key padding) and its dense mask.
- ``flash_attention``: the Triton forward kernel that visits only the visible key blocks.
- ``dispatch``: ``attention(q, k, v, spec=..., key_padding_mask=..., backend="auto")``.
"""

from avatarcast.kernels.dispatch import BACKENDS, add_call_hook, attention, select_backend
from avatarcast.kernels.masks import FrameBlockSpec, dense_mask

__all__ = ["BACKENDS", "FrameBlockSpec", "add_call_hook", "attention", "dense_mask", "select_backend"]
