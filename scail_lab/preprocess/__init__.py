"""From raw footage to SCAIL-2 example folders: people (backends: gt, mediapipe, segformer), colour masks with
SCAIL-2's semantics, 3-D-ordered pose renders aligned to the reference, captions (docs/PREPROCESS.md).
Plain functions and small classes; no Lightning or Hydra. Entry point: tools/prepare.py."""

from scail_lab.preprocess.backends import BACKENDS, build_backend
from scail_lab.preprocess.people import PersonTrack, bind_slots, track_people
from scail_lab.preprocess.prepare import PrepareOptions, prepare_example

__all__ = ["BACKENDS", "PersonTrack", "PrepareOptions", "bind_slots", "build_backend", "prepare_example",
           "track_people"]  # fmt: skip
