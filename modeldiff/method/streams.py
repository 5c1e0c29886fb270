"""Random streams. Each side of a comparison draws from its own stream, derived from (config seed, model identity,
role): with one stream for both, a model and its near copy follow nearly the same trajectories and the two sides are
not independent evidence. One config seed still reproduces the whole run."""

from __future__ import annotations

import hashlib


def stream_seed(seed: int, identity: str, role: str) -> int:
    """A 63-bit seed (torch.Generator and numpy take it) that is a function of (seed, identity, role) only."""
    digest = hashlib.sha256(f"{int(seed)}\0{identity}\0{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
