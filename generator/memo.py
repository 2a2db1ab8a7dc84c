"""Masks and biases over the vocabulary, built once per key and reused for every token after.

A token's masks are a handful of tensors of ~300 elements, so each torch op on them costs its call's overhead
(microseconds), not its arithmetic, and building one (`torch.isin` of a fresh `torch.tensor`, a comparison, a
negation) took several. Most of them depend on a few small values (a room left before a rest grows too long,
the instruments that have spent their bar, a voice's last pitch), which recur token after token. A `Memo`
keeps each one under its key; what it returns is the very tensor the ops would have built, so sampling with it
gives the same bits. The tensors are shared: never change one in place.

A follower keeps its `Memo` in an attribute that `sampling._forked` does not copy (it copies lists, dicts and
sets), so a critic's candidates share their piece's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

MAX_KEYS = 4096  # a long-lived memo (the composer's, across pieces) starts over rather than grow without end


class Memo:
    """Tensors by key, each made by its `make` the first time it is asked for."""

    def __init__(self) -> None:
        self._made: dict[Hashable, torch.Tensor] = {}

    def __call__(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        found = self._made.get(key)
        if found is None:
            if len(self._made) >= MAX_KEYS:
                self._made.clear()
            found = self._made[key] = make()
        return found
