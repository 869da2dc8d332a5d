"""Every key string of the motion-pair data: folder file names, shard fields, batch keys, gt.json keys.

Nothing else in scail_lab spells these strings; import the constants. Three vocabularies:

1. Example folders (the public SCAIL-2 layout, plus optional extras our synthetic world writes).
   Each role lists accepted file names in order of preference.
2. Shard fields (webdataset: tar member `<key>.<field>`; fields are lower case because webdataset
   lower-cases suffixes). Pixel shards keep the encoded file bytes; latent shards hold `.npy` arrays.
3. Batch keys: the dict a dataloader yields (the ConditionBuilder's input contract).
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------
# 1. Example-folder file names (role -> accepted names, preferred first)
# ---------------------------------------------------------------------------------------------------
IMAGE_EXTS = (".jpg", ".png", ".jpeg")

REF_IMAGE_FILES = ("ref.jpg", "ref.png", "ref.jpeg")
REF_MASK_FILES = ("ref_mask.jpg", "ref_mask.png", "ref_mask.jpeg")
# SCAIL-2 writes rendered_v2.mp4; SCAIL-Preview writes rendered.mp4 / rendered_aligned.mp4 (pose renders).
DRIVING_FILES = ("rendered_v2.mp4", "rendered_aligned.mp4", "rendered.mp4")
PREVIEW_POSE_FILES = ("rendered_aligned.mp4", "rendered.mp4")
# replace_mask.mp4 wins when both exist (SAT: ref_mask_flag = False when replace_mask.mp4 exists).
REPLACE_MASK_FILES = ("replace_mask.mp4",)
ANIMATE_MASK_FILES = ("rendered_mask_v2.mp4",)
TARGET_FILES = ("target.mp4", "GT.mp4", "gt.mp4")
CAPTION_FILES = ("prompt.txt",)
# Optional extras (our synthetic world writes them; real folders may too).
META_FILE = "meta.json"
GT_FILE = "gt.json"
TARGET_MASK_FILE = "target_mask.mp4"  # target foreground, white on black
# The target's background plate: its scene with no character, same camera (eval ground truth for foreground
# masks by plate difference). The synthetic world writes the first; `background.mp4` is accepted in eval folders.
TARGET_BACKGROUND_FILES = ("target_background.mp4", "background.mp4")
RAW_DRIVING_FILE = "driving.mp4"  # the raw driving video (identity B doing the motion)
POSE_RENDER_FILE = "pose.mp4"  # skeleton render of the motion (coloured limbs on black)
POSE_MASK_FILE = "pose_mask.mp4"  # palette-coloured silhouette of the skeleton render
DRIVING_AUG_FILES = ("rendered_v2_aug.mp4",)  # augmented driving variant
DRIVING_MASK_AUG_FILES = ("rendered_mask_v2_aug.mp4", "replace_mask_aug.mp4")
# Reverse driving: the reference of the driving character and the target coded as a driving mask.
REVERSE_REF_FILES = ("ref_driving.png", "ref_driving.jpg")
REVERSE_REF_MASK_FILES = ("ref_driving_mask.png", "ref_driving_mask.jpg")
REVERSE_DRIVING_MASK_FILES = ("target_driving_mask.mp4",)
CONTACT_SHEET_FILE = "contact_sheet.png"
# what the synthetic world writes (png: lossless masks)
SYNTH_REF_FILE = "ref.png"
SYNTH_REF_MASK_FILE = "ref_mask.png"

# meta.json keys (all optional in real folders)
META_MODE = "mode"  # "animate" | "replace"; default from the mask file name
META_DRIVING_KIND = "driving_kind"  # "video" (end-to-end) | "pose" (pose render)
META_CONTINUATION = "continuation"  # bool: the clip continues an earlier one (history prob 0.5)
META_FPS = "fps"
META_NUM_FRAMES = "num_frames"
META_HEIGHT = "height"
META_WIDTH = "width"
META_NUM_CHARACTERS = "num_characters"
META_SOURCE = "source"  # folder the sample came from (written by make_shards)
META_SPLIT = "split"
META_FILES = "files"  # shard field -> original file name (written by make_shards)
META_VALIDATED = "validated"  # True once make_shards checked frames / fps / size (then trusted by loaders)
META_MASK_SCHEME = "mask_scheme"  # latent shards: scheme name and width
META_MASK_WIDTH = "mask_width"
META_FRAME_INDICES = "frame_indices"  # latent shards: source frames that were encoded
META_BUCKET = "bucket"  # latent shards: [H, W] pixel bucket the latents were encoded at

MODES = ("animate", "replace")
DRIVING_KINDS = ("video", "pose")

# SCAIL-2 marks a continuation clip by its key (`..._1_00012`, `...part1_0_00012`).
CONTINUATION_KEY_PATTERN = re.compile(r"(_1_\d{5}|part1_0_\d{5})$")

# ---------------------------------------------------------------------------------------------------
# gt.json (ground truth of synthetic samples; the metrics code reads exactly these names)
# ---------------------------------------------------------------------------------------------------
GT_JOINTS = "joints"  # [frames][joints][2] pixel x, y of the TARGET character(s)
GT_JOINT_NAMES = "joint_names"
GT_IDENTITY_COLORS = "identity_colors"  # [[r, g, b], ...] uint8 colours of the target identity
GT_FPS = "fps"
GT_MODE = "mode"
GT_MOTION = "motion"
GT_IDENTITY_REF = "identity_ref"
GT_IDENTITY_DRIVING = "identity_driving"
GT_SPLIT = "split"
GT_SEED = "seed"
GT_NUM_CHARACTERS = "num_characters"
GT_DRIVING_JOINTS = "driving_joints"  # same layout as `joints`, for the driving character(s)
GT_REF_JOINTS = "ref_joints"  # [1][joints][2] the reference image's character(s), by palette slot
GT_MOTION_PARAMS = "motion_params"
GT_SCENE = "scene"
GT_INDEX = "index"
GT_DRIVING_KIND = "driving_kind"
GT_PALETTE = "palette"  # palette colour names by slot
GT_HEIGHT = "height"
GT_WIDTH = "width"
GT_NUM_FRAMES = "num_frames"

# ---------------------------------------------------------------------------------------------------
# 2. Shard fields
# ---------------------------------------------------------------------------------------------------
KEY = "__key__"
URL = "__url__"

# pixel shards: images keep their format in the field name, so `ref.jpg` or `ref.png`
F_REF = "ref"  # + image extension
F_REF_MASK = "ref_mask"
F_REVERSE_REF = "ref_driving"
F_REVERSE_REF_MASK = "ref_driving_mask"
F_DRIVING = "driving.mp4"
F_DRIVING_MASK = "driving_mask.mp4"
F_DRIVING_AUG = "driving_aug.mp4"
F_DRIVING_MASK_AUG = "driving_mask_aug.mp4"
F_REVERSE_DRIVING_MASK = "reverse_driving_mask.mp4"
F_TARGET = "target.mp4"
F_TARGET_MASK = "target_mask.mp4"
F_CAPTION = "caption.txt"
F_META = "meta.json"
F_GT = "gt.json"
F_CHECKSUMS = "checksums.json"  # {field: blake2b-128 hex} of every other member of the sample (make_shards)
IMAGE_FIELD_EXTS = ("jpg", "png", "jpeg")

# latent shards: float arrays stored as .npy (no pickle)
F_TARGET_LATENTS = "target_latents.npy"  # [16, T, h, w]
F_REF_LATENTS = "ref_latents.npy"  # [16, 1, h, w]
F_POSE_LATENTS = "pose_latents.npy"  # [16, T, h/2, w/2]
F_POSE_LATENTS_AUG = "pose_latents_aug.npy"
F_POSE_LATENTS_NULL = "pose_latents_null.npy"  # [16, T, h/2, w/2] latents of a black driving clip (pose dropout)
F_REF_MASK_CODE = "ref_mask_code.npy"  # [Cm, 1, h, w]
F_DRIVING_MASK_CODE = "driving_mask_code.npy"  # [Cm, T, h/2, w/2]
F_DRIVING_MASK_CODE_AUG = "driving_mask_code_aug.npy"
F_TEXT_EMB = "text_emb.npy"  # [L, D]
F_TEXT_EMB_NULL = "text_emb_null.npy"  # [L0, D] embedding of "" (text dropout)
F_CLIP_EMB = "clip_emb.npy"  # [257, 1280]
F_TARGET_REGION = "target_region.npy"  # [1, T, h, w] share of each latent cell the target's characters cover
F_REVERSE_PREFIX = "reverse_"  # reverse-driving variants: reverse_target_latents.npy, ...

# ---------------------------------------------------------------------------------------------------
# 3. Batch keys (what build_dataloader yields)
# ---------------------------------------------------------------------------------------------------
# pixel batches (uint8)
REF_IMAGE = "ref_image"  # [B, 3, H, W]
REF_MASK = "ref_mask"  # [B, 3, H, W]
DRIVING = "driving"  # [B, 3, N, H, W]
DRIVING_MASK = "driving_mask"  # [B, 3, N, H, W]; absent when no mask is used
TARGET = "target"  # [B, 3, N, H, W]
# latent batches (float)
TARGET_LATENTS = "target_latents"  # [B, 16, T, h, w]
REF_LATENTS = "ref_latents"  # [B, 16, 1, h, w]
POSE_LATENTS = "pose_latents"  # [B, 16, T, h/2, w/2]
REF_MASK_CODE = "ref_mask_code"  # [B, Cm, 1, h, w]
DRIVING_MASK_CODE = "driving_mask_code"  # [B, Cm, T, h/2, w/2]; absent for the `none` scheme
TEXT_EMB = "text_emb"  # [B, L, D] zero-padded
TEXT_EMB_LENGTHS = "text_emb_lengths"  # LongTensor [B]
CLIP_EMB = "clip_emb"  # [B, 257, 1280]
TARGET_REGION = "target_region"  # [B, 1, T, h, w] in [0, 1]: the characters' latent cells (loss weighting)
TARGET_MASK = "target_mask"  # [B, 3, N, H, W] uint8 (only while latent caching)
# both
CAPTION = "caption"  # list[str]
MODE = "mode"  # list[str]
NUM_HISTORY_FRAMES = "num_history_frames"  # LongTensor [B], latent frames
FPS = "fps"  # FloatTensor [B]
SAMPLE_KEY = "key"  # list[str]
SOURCE_CLIP = "source_clip"  # list[dict]: the clip before frame sampling / bucket fit (data/report.py)

PIXEL_TENSOR_KEYS = (REF_IMAGE, REF_MASK, DRIVING, DRIVING_MASK, TARGET)
LATENT_TENSOR_KEYS = (TARGET_LATENTS, REF_LATENTS, POSE_LATENTS, REF_MASK_CODE, DRIVING_MASK_CODE, CLIP_EMB)


def image_field(base: str, sample: dict) -> str | None:
    """The field of `sample` holding image `base` (`ref` -> `ref.png` or `ref.jpg`), or None."""
    for ext in IMAGE_FIELD_EXTS:
        name = f"{base}.{ext}"
        if name in sample:
            return name
    return None


def reverse_field(field: str) -> str:
    """Latent-shard field of the reverse-driving variant (`target_latents.npy` -> `reverse_target_latents.npy`)."""
    return F_REVERSE_PREFIX + field


def is_continuation_key(key: str) -> bool:
    """SCAIL-2's rule: keys ending `_1_ddddd` or `part1_0_ddddd` are continuation clips."""
    return CONTINUATION_KEY_PATTERN.search(key) is not None
