"""Train/infer parity: one example folder through the training loader and through the AnimationPipeline gives the
same conditions, the same DiTInputs and the same denoiser prediction (no skew between the two code paths)."""

from __future__ import annotations

import pytest
import torch

from scail_lab.conditioning import ConditionBuilder, ConditionEncoder
from scail_lab.data import AugmentConfig, FrameSampling, ResolutionBuckets, build_dataloader
from scail_lab.diffusion.samplers import EulerSampler
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.masks import ColourMaskScheme
from scail_lab.pipeline import AnimationPipeline, load_example
from scail_lab.pipeline.inputs import prepare
from scail_lab.pipeline.segments import plan_segments
from scail_lab.training.batches import conditions_from_batch
from tests.conftest import randomize_, tiny_config
from tests.standins import HashTextEncoder, PoolImageEncoder, PoolVAE
from tests.test_data_fixtures import write_synthetic

FIELDS = ("ref_latents", "pose_latents", "text_emb", "clip_emb", "ref_mask", "driving_mask")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    animate = write_synthetic(root / "a", 1, p_replace=0.0, p_two_characters=0.0, p_pose_driven=0.0)[0]
    replace = write_synthetic(root / "r", 1, p_replace=1.0, p_two_characters=0.0, p_pose_driven=0.0)[0]
    wide = write_synthetic(root / "w", 1, width=128, p_replace=0.0, p_two_characters=0.0, p_pose_driven=0.0)[0]
    return {"animate": animate, "replace": replace, "wide": wide}


@pytest.mark.parametrize("name, size", [("animate", 64), ("replace", 64), ("wide", 64), ("wide", 32)])
def test_training_and_sampling_see_the_same_inputs_and_predict_the_same_velocity(folders, name, size):
    """`wide` (64x128) is centre-cropped to 64x64, and downscaled to 32x64 then cropped to 32x32."""
    model = randomize_(SCAILDiT(tiny_config(text_len=128)), seed=0, std=0.02).eval()
    encoder = ConditionEncoder(PoolVAE(), ColourMaskScheme(), HashTextEncoder(32), PoolImageEncoder(32))
    folder = folders[name]
    mode = "replace" if name == "replace" else "animate"

    loader = build_dataloader(folders=[str(folder)], augment=AugmentConfig.off(), shuffle=False,
                              sampling=FrameSampling(frame_buckets=(9,), random_start=False),
                              buckets=ResolutionBuckets(sizes=((size, size),)))  # fmt: skip
    (batch,) = list(loader)
    train_cond, x0, num_history = conditions_from_batch(batch, encoder, torch.device("cpu"), uses_masks=True)

    pipe = AnimationPipeline(model, encoder, EulerSampler(shift=3.0), num_steps=2, guide_scale=1.0, height=size,
                             width=size, segment_len=9, segment_overlap=5, progress=False)  # fmt: skip
    example = prepare(load_example(folder), size, size)
    base, _ = pipe.encode(example)
    (plan,) = plan_segments(example.driving.shape[1], 9, 5)
    infer_cond = pipe.segment_conditions(base, example, plan)

    assert train_cond.mode == mode and infer_cond.mode == mode and int(num_history[0]) == 0
    for field in FIELDS:
        a, b = getattr(train_cond, field), getattr(infer_cond, field)
        assert a is not None and a.shape == b.shape, field
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=field)

    # the same noisy latents and timestep -> identical DiTInputs and prediction on both paths
    builder = ConditionBuilder()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x0.shape, generator=g)
    t = torch.tensor([700.0])
    train_inputs = builder.build(train_cond, x, t, None)
    infer_inputs = builder.build(infer_cond, x, t, None)
    with torch.no_grad():
        v_train, v_infer = model(train_inputs), model(infer_inputs)
    assert v_train.shape == x0.shape and v_train.abs().sum() > 0
    torch.testing.assert_close(v_train, v_infer, rtol=0, atol=0)
