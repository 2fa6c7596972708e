"""Partial weight updating: which state-dict entries the server shares with clients.

FedVSSL aggregates and broadcasts only the backbone: every entry whose first dotted key
component is ``backbone`` (parameters and BN buffers alike); each client keeps its own CtP
head. ``shared="all"`` shares the whole model (plain full-model FedAvg).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyFilter:
    """Selects keys by their first dotted component; ``components=None`` selects every key."""

    components: tuple[str, ...] | None

    @classmethod
    def parse(cls, shared: str | Sequence[str]) -> KeyFilter:
        """``"all"``, one component name (``"backbone"``) or a sequence of component names."""
        if shared == "all":
            return cls(None)
        names = (shared,) if isinstance(shared, str) else tuple(shared)
        if not names or not all(isinstance(n, str) and n and "." not in n for n in names):
            raise ValueError(
                f"shared must be 'all' or first key components such as 'backbone', got {shared!r}"
            )
        return cls(names)

    def __call__(self, key: str) -> bool:
        return self.components is None or key.split(".", 1)[0] in self.components

    def select(self, keys: Iterable[str]) -> list[str]:
        """The selected keys, in the given order."""
        return [k for k in keys if self(k)]

    def to_config(self) -> str | list[str]:
        """JSON-friendly form accepted back by :meth:`parse`."""
        if self.components is None:
            return "all"
        return self.components[0] if len(self.components) == 1 else list(self.components)


BACKBONE = KeyFilter(("backbone",))
