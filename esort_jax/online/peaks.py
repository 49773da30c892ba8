"""Streaming peak picking: `postprocess.find_spikes`'s rule, fed one block of final smoothed
values at a time, deciding every peak as early as the values allow.

The rule (see esort_jax.postprocess): a maximal run of equal smoothed values yields one peak,
at its first sample, iff the value before the run and the value after it are strictly lower
and the run's value is >= the threshold; outside the trace the values are -inf. With a minimum
distance d > 1, a peak is dropped if another peak of the same unit within d - 1 samples is
higher, or equally high and earlier (dropped peaks still count).

State per unit, independent of how long the stream runs: the current run (start, value,
whether it rose into it), and, with a minimum distance, the peaks of the last d - 1 samples
before the earliest place a new peak can appear.

When a peak at index t (a run of length L) is final, given smoothed values up to index F - 1:
  - without minimum distance: once the run has ended, F >= t + L + 1 (value t + L differs);
  - with d > 1: also F > t + d - 1 (no later peak can come within reach), and no run still
    open within reach (a possible peak) is higher than it.
`StreamingPeaks.finish` ends the trace (a -inf after the last value) and decides the rest.
"""

from __future__ import annotations

import numpy as np

__all__ = ["StreamingPeaks"]

_PENDING, _EMITTED, _DROPPED = 0, 1, 2


def _empty():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


class StreamingPeaks:
    """Peaks of N smoothed traces given in consecutive blocks [N, k] (float32, finite)."""

    def __init__(self, num_units: int, threshold: float, min_distance: int = 0):
        self.num_units = int(num_units)
        self.threshold = np.float32(threshold)
        self.reach = max(int(min_distance) - 1, 0)
        self.reset()

    def reset(self) -> None:
        """Start a new trace at index 0."""
        n = self.num_units
        self.next_index = 0  # index of the next smoothed value
        self.run_value = np.full(n, -np.inf, np.float32)
        self.run_start = np.full(n, -1, np.int64)
        self.run_up = np.zeros(n, bool)
        self._recent: dict[int, list[list]] = {}  # unit -> [[index, height, state], ...] (min distance)

    def push(self, sm_NxK: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The peaks that became final with these values: (indices, unit rows, heights),
        sorted by (index, unit)."""
        sm = np.asarray(sm_NxK, np.float32)
        if sm.ndim != 2 or sm.shape[0] != self.num_units:
            raise ValueError(f"expected smoothed values [{self.num_units}, k]; got {sm.shape}")
        if sm.shape[1] == 0:
            return _empty()
        found = self._runs_ended(sm)
        return self._decide(*found, ended=False)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """End the trace: the last run of each unit ends at -inf; every pending peak is decided.
        The state is then reset."""
        units = np.nonzero(self.run_up & (self.run_value >= self.threshold))[0]
        found = (self.run_start[units], units.astype(np.int64), self.run_value[units])
        out = self._decide(*found, ended=True)
        self.reset()
        return out

    def _runs_ended(self, sm: np.ndarray):
        """Peaks (before the minimum distance) whose run ended inside this block; updates the run state."""
        n, k = sm.shape
        prev = np.concatenate([self.run_value[:, None], sm[:, :-1]], axis=1)
        up, down = sm > prev, sm < prev
        columns = np.arange(k)
        last_change = np.maximum.accumulate(np.where(up | down, columns, -1), axis=1)
        units, cols = np.nonzero(down)  # a peak's run ends with a fall; row-major: per unit in order
        before = np.where(cols > 0, last_change[units, np.maximum(cols - 1, 0)], -1)
        carried = before < 0  # the run began before this block
        start = np.where(carried, self.run_start[units], self.next_index + before)
        rose = np.where(carried, self.run_up[units], up[units, np.maximum(before, 0)])
        height = prev[units, cols]
        keep = rose & (height >= self.threshold)
        last = last_change[:, -1]
        changed = last >= 0
        self.run_start = np.where(changed, self.next_index + last, self.run_start)
        self.run_up = np.where(changed, up[np.arange(n), np.maximum(last, 0)], self.run_up)
        self.run_value = sm[:, -1].copy()
        self.next_index += k
        return start[keep], units[keep].astype(np.int64), height[keep]

    def _decide(self, index, unit, height, *, ended: bool):
        if self.reach == 0:
            return _sorted(index, unit, height)
        for t, n, v in zip(index.tolist(), unit.tolist(), height.tolist()):
            self._add_peak(n, t, v)
        return self._release(ended)

    def _add_peak(self, unit: int, index: int, height: float) -> None:
        """Record a new peak; it and the earlier peaks within reach drop each other (non-iterative)."""
        entries = self._recent.setdefault(unit, [])
        dropped = False
        for entry in entries:
            if index - entry[0] <= self.reach:
                if entry[1] >= height:
                    dropped = True
                else:
                    assert entry[2] != _EMITTED, "an emitted spike cannot be dropped"
                    entry[2] = _DROPPED
        entries.append([index, height, _DROPPED if dropped else _PENDING])

    def _release(self, ended: bool):
        """Emit the pending peaks nothing later can drop; forget peaks that can no longer matter."""
        out_index, out_unit, out_height = [], [], []
        for unit in list(self._recent):
            candidate = bool(self.run_up[unit] and self.run_value[unit] >= self.threshold)
            open_start, open_value = int(self.run_start[unit]), float(self.run_value[unit])
            for entry in self._recent[unit]:
                t, v, state = entry
                if state != _PENDING:
                    continue
                blocked = not ended and (
                    t + self.reach >= self.next_index
                    or (candidate and 0 < open_start - t <= self.reach and open_value > v)
                )
                if not blocked:
                    entry[2] = _EMITTED
                    out_index.append(t)
                    out_unit.append(unit)
                    out_height.append(v)
            frontier = open_start if candidate else self.next_index
            kept = [e for e in self._recent[unit] if e[2] == _PENDING or e[0] + self.reach >= frontier]
            if kept:
                self._recent[unit] = kept
            else:
                del self._recent[unit]
        return _sorted(np.asarray(out_index, np.int64), np.asarray(out_unit, np.int64),
                       np.asarray(out_height, np.float32))


def _sorted(index, unit, height):
    order = np.lexsort((unit, index))
    return index[order], unit[order], height[order]
