"""The backends as the frontend sees them: who is in a pool, how loaded each member is, and where a
coding group goes. No gRPC.

A `Pool` holds the members of one kind of backend (workers, encoders or decoders) by address, the batches
this frontend has in flight on each, and which members failed lately. `Pool.choose(n, rotation)` picks
n distinct members, the least loaded first; ties are broken by rotating the member list by `rotation`
(the group id), so that an idle pool still deals consecutive groups to different members. A member whose
call failed (its stream broke, its deadline passed) is a suspect for `suspect_s`: chosen only when too
few others are left. Frontends do not coordinate: each balances by what it has in flight itself.

A `Placement` names the k data workers and r parity workers of one group. In a pool, they are k + r
distinct members (`place_in_pool`: independent failures); in the fixed layout (explicit parity
targets), data batch j of group g goes to slot (j + g) mod k and the parity to the parity workers
(`place_in_slots`).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NO_MEMBER = ""  # chosen from an empty pool: a call to it fails at once (Unavailable) and is recovered


@dataclass(frozen=True)
class Placement:
    data: tuple[str, ...]  # k addresses: data batch j goes to data[j]
    parity: tuple[str, ...]  # r addresses: parity batch i goes to parity[i]

    def data_worker(self, j: int, tried: int) -> str:
        """Where data batch j goes on its try number `tried` (0: first; a re-send moves to the next)."""
        return self.data[(j + tried) % len(self.data)]


class Pool:
    def __init__(
        self, members: Sequence[str] = (), suspect_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._members: list[str] = []
        self._suspect_s, self._clock = suspect_s, clock
        self._inflight: Counter[str] = Counter()
        self._suspect_until: dict[str, float] = {}
        self.sent: Counter[str] = Counter()  # batches sent to each address since start (for reports)
        self._turns = itertools.count()  # the rotation of calls that name none
        self.update(members)

    @property
    def members(self) -> list[str]:
        return list(self._members)

    def update(self, members: Sequence[str]) -> tuple[list[str], list[str]]:
        """Take the members discovery found now; return (joined, left)."""
        found = sorted(set(members))
        joined = [m for m in found if m not in self._members]
        left = [m for m in self._members if m not in found]
        self._members = found
        for member in left:
            self._suspect_until.pop(member, None)
        return joined, left

    def inflight(self, member: str) -> int:
        return self._inflight[member]

    def started(self, member: str) -> None:
        self._inflight[member] += 1
        self.sent[member] += 1

    def finished(self, member: str, failed: bool = False) -> None:
        self._inflight[member] -= 1
        if self._inflight[member] <= 0:
            del self._inflight[member]
        if failed:
            self.failed(member)
        else:
            self._suspect_until.pop(member, None)

    def failed(self, member: str) -> None:
        """`member` failed a call: a suspect for `suspect_s` from now."""
        self._suspect_until[member] = self._clock() + self._suspect_s

    def suspect(self, member: str) -> bool:
        return self._suspect_until.get(member, 0.0) > self._clock()

    def choose(self, n: int, rotation: int | None = None) -> list[str]:
        """n members, distinct when the pool has n: healthy before suspects, then the least loaded,
        then in the member list rotated by `rotation` (None: by one more than the last such call).
        With fewer than n members, they repeat."""
        if not self._members:
            return [NO_MEMBER] * n
        if rotation is None:
            rotation = next(self._turns)
        size = len(self._members)
        ranked = sorted(
            range(size),
            key=lambda i: (
                self.suspect(self._members[i]),
                self._inflight[self._members[i]],
                (i - rotation) % size,
            ),
        )
        return [self._members[ranked[i % size]] for i in range(n)]


def place_in_pool(pool: Pool, k: int, r: int, group_id: int) -> Placement:
    chosen = pool.choose(k + r, group_id)
    return Placement(tuple(chosen[:k]), tuple(chosen[k:]))


def place_in_slots(slots: Sequence[str], parity: Sequence[str], group_id: int) -> Placement:
    k = len(slots)
    return Placement(tuple(slots[(j + group_id) % k] for j in range(k)), tuple(parity))
