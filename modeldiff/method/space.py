"""The input space Ω = S^L: sequences of `length` tokens drawn from an allowed token set S.

Every sequence is scored after a BOS token. Sequences are stored as *token ids*; samplers work
on *slots* (indices into `token_ids`) so that "a uniform random allowed token" is one randint.
Enumeration order is lexicographic over slots, first position most significant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class InputSpace:
    length: int
    token_ids: tuple[int, ...]
    bos_token_id: int

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"space.length must be >= 1, got {self.length}")
        if len(self.token_ids) < 2:
            raise ValueError("the allowed token set needs at least 2 tokens (space.vocab_size >= 2)")
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ValueError("the allowed token ids contain duplicates")
        if self.bos_token_id is None:
            raise ValueError("space.bos_token_id is not set and the model has no BOS token: set it in the config")

    @classmethod
    def from_vocab_size(cls, length: int, vocab_size: int, bos_token_id: int) -> InputSpace:
        return cls(int(length), tuple(range(int(vocab_size))), int(bos_token_id))

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def size(self) -> int:
        """|Ω| = V^L as an exact Python int."""
        return self.n_tokens**self.length

    @property
    def log_size(self) -> float:
        """ln |Ω| = L · ln V, finite where |Ω| overflows a float (50,256^100 for gpt2-100)."""
        return self.length * float(np.log(self.n_tokens))

    def size_text(self) -> str:
        """|Ω| for messages, e.g. '1e+470' where float(|Ω|) would overflow."""
        exponent = self.log_size / np.log(10.0)
        return f"{10 ** (exponent % 1):.3g}e+{int(exponent)}"

    def columns(self) -> slice | torch.Tensor:
        """The allowed ids as an index into a vocabulary axis: a slice (a view, no copy) when they are contiguous."""
        lo = self.token_ids[0]
        if self.token_ids == tuple(range(lo, lo + self.n_tokens)):
            return slice(lo, lo + self.n_tokens)
        return self.ids_tensor()

    def ids_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.token_ids, dtype=torch.long, device=device)

    def slots_to_ids(self, slots: torch.Tensor) -> torch.Tensor:
        return self.ids_tensor(slots.device)[slots]

    def ids_to_slots(self, ids: torch.Tensor) -> torch.Tensor:
        top = max(max(self.token_ids), int(ids.max()) if ids.numel() else 0)
        lookup = torch.full((top + 1,), -1, dtype=torch.long, device=ids.device)
        lookup[self.ids_tensor(ids.device)] = torch.arange(self.n_tokens, device=ids.device)
        slots = lookup[ids.clamp(min=0)]
        if (slots < 0).any() or (ids < 0).any():
            raise ValueError("sequence contains a token id outside the allowed token set")
        return slots

    def random_slots(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.n_tokens, (n, self.length), generator=generator)

    def index_to_ids(self, index: np.ndarray) -> np.ndarray:
        """Lexicographic enumeration index -> token ids, shape [n, L]."""
        index = np.asarray(index, dtype=np.int64)
        v = self.n_tokens
        powers = v ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        slots = (index[:, None] // powers[None, :]) % v
        return np.asarray(self.token_ids, dtype=np.int64)[slots]

    def ids_to_index(self, ids: np.ndarray) -> np.ndarray:
        """Token ids [n, L] -> lexicographic enumeration index."""
        slots = self.ids_to_slots(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()
        powers = self.n_tokens ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return slots @ powers
