"""When a coding group's parity path starts: the hedge policy, apart from the group that uses it."""

from __future__ import annotations

from collections import deque

import numpy as np

from coded_invnet.serving.policies import RecoveryPolicy


class ParityDelay:
    """How long after dispatch a group's parity path starts, unless a batch fails first.

    `parity_delay_ms`, or with `parity_delay_quantile` q > 0 the later of that and the q-quantile of how
    long recent groups answered entirely by their data workers took. This is the hedged request of
    "The Tail at Scale" (hedge at about the p90), with the parity as the hedge: a group answered by then
    needs no parity work at all, and a late one gets it while its straggler is still out. On cores the
    parity path shares with the data path, this keeps coding from slowing the healthy groups down. Until
    enough groups were seen, `parity_delay_ms` alone applies (0: at once).
    """

    WINDOW = 256  # recent groups the quantile is taken over
    REFRESH = 16  # groups between two estimates
    MIN_GROUPS = 32

    def __init__(self, recovery: RecoveryPolicy) -> None:
        self.floor_s = recovery.parity_delay_s
        self.quantile = recovery.parity_delay_quantile
        self.seconds = self.floor_s
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self._unseen = 0

    def observe(self, clean_seconds: float) -> None:
        """A group answered by its data workers alone took ``clean_seconds`` from dispatch."""
        if self.quantile <= 0:
            return
        self._recent.append(clean_seconds)
        self._unseen += 1
        if self._unseen >= self.REFRESH and len(self._recent) >= self.MIN_GROUPS:
            self._unseen = 0
            self.seconds = max(self.floor_s, float(np.quantile(self._recent, self.quantile)))
