"""Long videos as overlapping segments with clean history, covering every driving frame.

SCAIL-2 generates 81-frame windows with a 5-frame overlap: the last 5 decoded frames of a segment are
re-encoded (2 latent frames) and enter the next segment as clean history. The released code drops the tail
that does not fill a whole window; here the last segment is shortened (to the next 4k+1 length, padding the
driving video by repeating its last frame when needed) so the output has exactly as many frames as the input.
"""

from __future__ import annotations

from dataclasses import dataclass


def next_valid_length(frames: int) -> int:
    """Smallest 4k + 1 >= frames."""
    return frames + (-(frames - 1)) % 4


@dataclass(frozen=True)
class SegmentPlan:
    """Pixel frames [start, start + length) are generated; the first `history` are clean history (k > 0).

    `padding` frames past the end of the driving video are filled with its last frame and discarded.
    """

    start: int
    length: int
    history: int
    padding: int

    @property
    def new_frames(self) -> range:
        """Output frame indices this segment contributes."""
        return range(self.start + self.history, self.start + self.length - self.padding)


def plan_segments(num_frames: int, segment_len: int = 81, overlap: int = 5) -> list[SegmentPlan]:
    if num_frames < 1:
        raise ValueError(f"the driving video has no frames (got {num_frames})")
    if segment_len < 5 or (segment_len - 1) % 4:
        raise ValueError(f"segment_len must be 4k+1 and >= 5, got {segment_len}")
    if overlap < 1 or (overlap - 1) % 4 or overlap >= segment_len:
        raise ValueError(
            f"segment overlap must be 4k+1 and smaller than segment_len ({segment_len}), got {overlap}"
        )
    plans = []
    start, history = 0, 0
    while True:
        remaining = num_frames - start
        length = min(segment_len, next_valid_length(remaining))
        padding = max(0, length - remaining)
        plans.append(SegmentPlan(start, length, history, padding))
        if start + length >= num_frames:
            return plans
        start, history = start + length - overlap, overlap
