"""Character identities: proportions, limb widths, colours and clothing patterns, independent of pose.

An identity is deterministic from (world seed, identity id). Lengths are in body-height units (standing
height from ankle to the top of the head is 1), widths are fractions of the body height.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PATTERNS = ("solid", "stripes", "bands", "checks")
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "orange": (230, 120, 30), "yellow": (225, 200, 40), "green": (50, 160, 60),
    "teal": (30, 140, 140), "blue": (40, 80, 200), "navy": (25, 35, 100), "purple": (120, 50, 170),
    "pink": (230, 120, 170), "white": (235, 235, 235), "grey": (128, 128, 128), "black": (30, 30, 30),
    "brown": (120, 75, 40), "beige": (210, 190, 150),
}  # fmt: skip
SKIN_TONES = ((255, 220, 185), (240, 195, 150), (210, 160, 120), (170, 120, 80), (120, 80, 55), (90, 60, 40))
HAIR_COLOURS = {"black": (25, 20, 20), "brown": (95, 60, 30), "blond": (220, 190, 110), "red": (170, 60, 30),
                "grey": (170, 170, 170), "blue": (50, 90, 200)}  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """A character's look. `lengths`/`widths` feed skeleton.body_points and the renderer."""

    identity_id: int
    height_frac: float  # standing height as a fraction of the frame height
    lengths: dict[str, float] = field(hash=False)
    widths: dict[str, float] = field(hash=False)
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_name: str
    hair_style: str  # short | long | bald
    shirt: tuple[int, int, int]
    shirt2: tuple[int, int, int]
    shirt_names: tuple[str, str]
    shirt_pattern: str
    long_sleeves: bool
    pants: tuple[int, int, int]
    pants2: tuple[int, int, int]
    pants_names: tuple[str, str]
    pants_pattern: str
    shoes: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"id{self.identity_id:05d}"

    @property
    def colours(self) -> list[list[int]]:
        """Distinct uint8 colours of the identity's parts and clothing (gt.json `identity_colors`)."""
        cols = [self.skin, self.shirt, self.pants, self.shoes]
        if self.hair_style != "bald":
            cols.append(self.hair)
        if self.shirt_pattern != "solid":
            cols.append(self.shirt2)
        if self.pants_pattern != "solid":
            cols.append(self.pants2)
        return [list(c) for c in dict.fromkeys(cols)]

    def describe(self) -> str:
        """A caption fragment, e.g. 'a tall person with long blond hair in a red and white striped shirt'."""
        build = "tall " if self.height_frac > 0.7 else ("short " if self.height_frac < 0.6 else "")
        hair = "a bald head" if self.hair_style == "bald" else f"{self.hair_style} {self.hair_name} hair"
        shirt = _garment(
            self.shirt_names, self.shirt_pattern, "long-sleeved shirt" if self.long_sleeves else "t-shirt"
        )
        pants = _garment(self.pants_names, self.pants_pattern, "trousers")
        return f"a {build}person with {hair} wearing a {shirt} and {pants}"


def _garment(names: tuple[str, str], pattern: str, noun: str) -> str:
    if pattern == "solid":
        return f"{names[0]} {noun}"
    adjective = {"stripes": "striped", "bands": "vertically striped", "checks": "checked"}[pattern]
    return f"{names[0]} and {names[1]} {adjective} {noun}"


def _colour(rng: np.random.Generator, exclude: str | None = None) -> tuple[str, tuple[int, int, int]]:
    names = [n for n in NAMED_COLOURS if n != exclude]
    name = names[int(rng.integers(len(names)))]
    jitter = rng.integers(-15, 16, size=3)
    rgb = tuple(int(v) for v in np.clip(np.array(NAMED_COLOURS[name]) + jitter, 0, 255))
    return name, rgb


def make_identity(world_seed: int, identity_id: int) -> Identity:
    """The identity with this id (deterministic from the world seed and the id)."""
    rng = np.random.default_rng([world_seed, 0x1D, identity_id])
    raw = {
        "shin": rng.uniform(0.22, 0.28), "thigh": rng.uniform(0.22, 0.28), "torso": rng.uniform(0.28, 0.34),
        "neck": rng.uniform(0.03, 0.05), "head_radius": rng.uniform(0.055, 0.075),
    }  # fmt: skip
    total = raw["shin"] + raw["thigh"] + raw["torso"] + raw["neck"] + 2 * raw["head_radius"]
    lengths = {k: float(v / total) for k, v in raw.items()}
    arm = rng.uniform(0.36, 0.44)
    split = rng.uniform(0.48, 0.55)
    lengths.update(
        upper_arm=float(arm * split), forearm=float(arm * (1 - split)),
        shoulder_half=float(rng.uniform(0.08, 0.12)), hip_half=float(rng.uniform(0.05, 0.08)),
    )  # fmt: skip
    bulk = rng.uniform(0.8, 1.25)
    widths = {
        "upper_arm": 0.05 * bulk, "forearm": 0.042 * bulk, "thigh": 0.07 * bulk, "shin": 0.055 * bulk,
        "torso": 0.07 * bulk, "neck": 0.035, "hand": 0.028 * bulk, "foot": 0.03,
    }  # fmt: skip
    shirt_name, shirt = _colour(rng)
    shirt2_name, shirt2 = _colour(rng, exclude=shirt_name)
    pants_name, pants = _colour(rng)
    pants2_name, pants2 = _colour(rng, exclude=pants_name)
    _, shoes = _colour(rng)
    hair_name = list(HAIR_COLOURS)[int(rng.integers(len(HAIR_COLOURS)))]
    return Identity(
        identity_id=int(identity_id),
        height_frac=float(rng.uniform(0.52, 0.76)),
        lengths=lengths,
        widths={k: float(v) for k, v in widths.items()},
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        hair=HAIR_COLOURS[hair_name],
        hair_name=hair_name,
        hair_style=str(rng.choice(["short", "long", "bald"], p=[0.55, 0.35, 0.1])),
        shirt=shirt,
        shirt2=shirt2,
        shirt_names=(shirt_name, shirt2_name),
        shirt_pattern=str(rng.choice(PATTERNS)),
        long_sleeves=bool(rng.random() < 0.4),
        pants=pants,
        pants2=pants2,
        pants_names=(pants_name, pants2_name),
        pants_pattern=str(rng.choice(PATTERNS, p=[0.5, 0.2, 0.15, 0.15])),
        shoes=shoes,
    )
