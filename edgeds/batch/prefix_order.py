"""The job's order of work with the prefix cache on: requests that share a prompt prefix run
close together, so the blocks they share are still cached (or computed once in one prefill
call) when each of them starts.

Up to WINDOW requests are read ahead. The next one handed to the generate loop is the waiting
one whose prompt shares the most leading tokens with the last one handed out, where that is at
least one whole cache block; otherwise the one waiting longest. Among sorted prompts the longest
shared head with a prompt is at its neighbour in the sort, so the pick looks at two. No request
waits more than WINDOW hand-outs: the oldest then goes next whatever it shares. Outputs are
keyed by id and greedy tokens do not depend on a batch's makeup, so only the order changes."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

WINDOW = 256  # requests read ahead: tokenized prompts, a few MB at most


def shared_head(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens a and b share."""
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


class PrefixOrder:
    """Iterate over it for the requests of `source` (objects with `prompt_ids`; None from it:
    none ready yet, passed on when nothing waits here) in prefix order."""

    def __init__(self, source: Iterator, block_tokens: int, window: int = WINDOW):
        self.source, self.block_tokens, self.window = source, block_tokens, window
        self.sorted: list[tuple[tuple[int, ...], int]] = []  # (prompt, arrival), sorted
        # arrival -> (request, its prompt as sorted, hand-outs made before it came)
        self.by_arrival: OrderedDict[int, tuple[object, tuple, int]] = OrderedDict()
        self.arrivals = self.handed = 0
        self.last = None  # the request last handed out

    @property
    def waiting(self) -> int:
        return len(self.by_arrival)

    def __iter__(self) -> Iterator:
        ended = False
        while True:
            ready = True
            while not ended and ready and self.waiting < self.window:
                req = next(self.source, StopIteration)
                if req is StopIteration:
                    ended = True
                elif req is None:
                    ready = False
                else:
                    key = tuple(req.prompt_ids.tolist())
                    insort(self.sorted, (key, self.arrivals))
                    self.by_arrival[self.arrivals] = req, key, self.handed
                    self.arrivals += 1
            if self.waiting:
                yield self._take()
            elif ended:
                return
            else:
                yield None

    def _take(self):
        oldest, (_, _, came) = next(iter(self.by_arrival.items()))
        pick = oldest
        if self.last is not None and self.handed - came < self.window:
            i = bisect_left(self.sorted, (tuple(self.last.prompt_ids.tolist()),))
            best = self.block_tokens - 1  # less than a whole block shared: no better than FIFO
            for j in (i - 1, i):
                if 0 <= j < len(self.sorted):
                    arrival = self.sorted[j][1]
                    n = shared_head(self.by_arrival[arrival][0].prompt_ids, self.last.prompt_ids)
                    if n > best or (n == best and n >= self.block_tokens and arrival < pick):
                        best, pick = n, arrival
        req, key, _ = self.by_arrival.pop(pick)
        del self.sorted[bisect_left(self.sorted, (key, pick))]
        self.last = req
        self.handed += 1
        return req
