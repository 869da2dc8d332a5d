"""AnimationPipeline: determinism, guidance cost, long-video coverage, LoRA merge, errors before model work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scail_lab.conditioning import ConditionEncoder
from scail_lab.data import media
from scail_lab.diffusion.samplers import EulerSampler, UniPCSampler
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.lora import export_lora, merge_lora
from scail_lab.model.masks import ColourMaskScheme
from scail_lab.pipeline import AnimationPipeline, MotionExample, load_example
from scail_lab.pipeline.outputs import write_result
from scail_lab.pipeline.segments import next_valid_length, plan_segments
from tests.conftest import randomize_, tiny_config
from tests.standins import HashTextEncoder, PoolImageEncoder, PoolVAE


def make_example(frames=9, size=(64, 64), mode="animate", seed=0) -> MotionExample:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    ref = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    driving = torch.randint(0, 256, (3, frames, h, w), generator=g, dtype=torch.uint8)
    ref_mask = torch.zeros(3, h, w, dtype=torch.uint8)
    ref_mask[2, h // 4 :, w // 4 : 3 * w // 4] = 255  # a blue character
    driving_mask = ref_mask.unsqueeze(1).repeat(1, frames, 1, 1)
    return MotionExample(ref, driving, ref_mask, driving_mask, prompt="a person dances", fps=8.0, mode=mode)


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.batches: list[int] = []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, inputs):
        self.batches.append(inputs.batch_size)
        self.last = inputs
        return self.inner(inputs)


def make_pipeline(model=None, **kwargs) -> AnimationPipeline:
    model = model if model is not None else randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02)
    encoder = ConditionEncoder(PoolVAE(), ColourMaskScheme(), HashTextEncoder(32), PoolImageEncoder(32))
    options = dict(
        num_steps=3, guide_scale=1.0, height=64, width=64, segment_len=9, segment_overlap=5, progress=False
    )
    options.update(kwargs)
    return AnimationPipeline(model, encoder, options.pop("sampler", EulerSampler(shift=3.0)), **options)


class PlacementRecorder(torch.nn.Module):
    """Device-recording stand-in for an encoder configured on `placement`: `.to()` records where it is sent (without
    moving, so a CPU machine can stand for a GPU one) and every encode call records where its weights are."""

    def __init__(self, inner, placement: str) -> None:
        super().__init__()
        self.inner, self.placement, self.calls = inner, placement, []

    def to(self, device, *args, **kwargs):
        self.placement = str(torch.device(device))
        return self

    def encode(self, x):
        self.calls.append(self.placement)
        return self.inner.encode(x)


def test_encoders_stay_on_their_device_for_every_example():
    """The pipeline never moves the encoders: a pipeline that sent them to the CPU after the first example ran
    umT5 and CLIP on the CPU from the second example on (encoder offload is the encoders' own `offload`)."""
    text, image = PlacementRecorder(HashTextEncoder(32), "cuda:0"), PlacementRecorder(PoolImageEncoder(32), "cuda:0")
    encoder = ConditionEncoder(PoolVAE(), ColourMaskScheme(), text, image)
    pipeline = AnimationPipeline(randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02), encoder, EulerSampler(),
                                 num_steps=1, guide_scale=2.0, height=64, width=64, segment_len=9, progress=False)  # fmt: skip
    for seed in (0, 1):
        pipeline(make_example(seed=seed), seed=seed)
    assert text.calls == ["cuda:0"] * 4  # prompt + negative prompt, two examples
    assert image.calls == ["cuda:0"] * 2


@pytest.mark.parametrize("kind", ["text", "image"])
def test_offloading_encoders_compute_on_their_device_on_every_call(kind):
    """offload=True: the weights go to `device` for each call and back to the CPU after, call after call."""
    from scail_lab.encoders.light import build_light_image_encoder, build_light_text_encoder

    if kind == "text":
        encoder = build_light_text_encoder(text_dim=32, text_len=16, device="cuda:0", offload=True)
        weights, call = encoder.model, lambda: encoder.encode(["a person waves"])
    else:
        encoder = build_light_image_encoder(clip_dim=32, device="cuda:0", offload=True)
        weights, call = encoder.visual, lambda: encoder.encode(torch.zeros(1, 3, 32, 32))
    moves = []
    real_to = weights.to
    weights.to = lambda device: (moves.append(str(torch.device(device))), real_to("cpu"))[1]  # record, stay on CPU
    call()
    call()
    assert moves == ["cuda:0", "cpu", "cuda:0", "cpu"]


def test_plan_segments_cover_every_frame_exactly_once():
    for n in range(1, 60):
        plans = plan_segments(n, segment_len=17, overlap=5)
        covered = [i for p in plans for i in p.new_frames]
        assert covered == list(range(n)), n
        assert all((p.length - 1) % 4 == 0 and p.length <= 17 for p in plans)
        assert plans[0].history == 0 and all(p.history == 5 for p in plans[1:])
    assert next_valid_length(10) == 13 and next_valid_length(9) == 9
    with pytest.raises(ValueError, match="overlap"):
        plan_segments(30, 17, 4)


def test_same_seed_same_video_and_a_different_seed_differs():
    pipe = make_pipeline()
    example = make_example()
    a, b, c = pipe(example, seed=1), pipe(example, seed=1), pipe(example, seed=2)
    assert a.video.dtype == torch.uint8 and a.video.shape == (3, 9, 64, 64)
    assert torch.equal(a.video, b.video)
    assert (a.video.int() - c.video.int()).abs().float().mean() > 5


def test_paste_back_keeps_the_driving_scene_where_the_replace_mask_is_white():
    """pipeline.paste_back: in replacement the driving pixels wherever every mask channel is above the threshold
    (SCAIL-2's white = take the scene), the generated pixels elsewhere; animation and the default are untouched."""
    example = make_example(mode="replace")
    mask = torch.full_like(example.driving_mask, 255)  # white: the scene
    mask[:, :, 16:48, 20:40] = 0
    mask[0, :, 16:48, 20:40] = 255  # a red person (not white: one channel on)
    mask[:, 4, 0, 0] = 225  # the threshold is strict: 225 is off, so this pixel is generated
    example = example.replace(driving_mask=mask)
    plain, pasted = make_pipeline()(example, seed=3).video, make_pipeline(paste_back=True)(example, seed=3).video
    white = (mask > 225).all(dim=0)  # [N, H, W]
    assert white.sum() == 9 * 64 * 64 - 9 * 32 * 20 - 1
    assert torch.equal(pasted[:, white], example.driving[:, white])
    assert torch.equal(pasted[:, ~white], plain[:, ~white])
    assert (plain[:, white].int() - example.driving[:, white].int()).abs().float().mean() > 5  # it did change
    animate = example.replace(mode="animate")
    assert torch.equal(make_pipeline(paste_back=True)(animate, seed=3).video, make_pipeline()(animate, seed=3).video)


def test_guide_scale_one_runs_one_forward_per_step_and_above_one_batches_cond_and_uncond():
    model = CountingModel(randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02))
    make_pipeline(model, guide_scale=1.0, num_steps=4)(make_example())
    assert model.batches == [1] * 4
    model.batches.clear()
    make_pipeline(model, guide_scale=4.0, num_steps=4, sampler=UniPCSampler(shift=3.0))(make_example())
    assert model.batches == [2] * 4


def test_pose_guidance_runs_a_blacked_out_driving_branch():
    """pose_guide_scale > 1: a second branch per step whose driving clip (pose latents and mask codes) is what pose
    dropout trains on, the encoding of a black clip; 1 leaves sampling exactly as it was."""
    model = CountingModel(randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02))
    plain = make_pipeline(model, num_steps=3)(make_example(), seed=0)
    same = make_pipeline(model, num_steps=3, pose_guide_scale=1.0)(make_example(), seed=0)
    assert torch.equal(plain.video, same.video)
    model.batches.clear()
    pipe = make_pipeline(model, num_steps=3, pose_guide_scale=2.5)
    guided = pipe(make_example(), seed=0)
    assert model.batches == [2] * 3
    assert (guided.video.int() - plain.video.int()).abs().float().mean() > 0.5
    black = torch.zeros(1, 3, 9, 64, 64, dtype=torch.uint8)
    cond, free = model.last.pose_latents.chunk(2)
    torch.testing.assert_close(free, pipe.encoder.pose_latents(black))
    assert not torch.equal(cond, free)
    torch.testing.assert_close(model.last.driving_mask[1:], pipe.encoder.driving_mask_code(black))
    model.batches.clear()
    make_pipeline(model, num_steps=3, pose_guide_scale=2.5, guide_scale=3.0)(make_example(), seed=0)
    assert model.batches == [3] * 3  # text and pose guidance share one batch
    with pytest.raises(ValueError, match="cfg_parallel"):
        make_pipeline(model, pose_guide_scale=2.0, cfg_parallel=object())


@pytest.mark.parametrize("frames", [9, 14, 21, 30])
def test_long_videos_cover_every_driving_frame(frames):
    model = CountingModel(randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02))
    result = make_pipeline(model, num_steps=2)(make_example(frames=frames))
    assert result.video.shape[1] == frames
    assert len(result.segments) == len(plan_segments(frames, 9, 5))
    assert len(model.batches) == 2 * len(result.segments)


def test_history_frames_stay_clean_through_denoising():
    pipe = make_pipeline(num_steps=3)
    example = pipe_example = make_example(frames=9)
    base, negative = pipe.encode(pipe_example)
    conditions = pipe.segment_conditions(base, example, plan_segments(9, 9, 5)[0])
    history = torch.randn(1, 16, 2, 8, 8)
    latents = pipe.denoise(conditions, negative, history, torch.Generator().manual_seed(0))
    assert torch.equal(latents[:, :, :2], history)


def test_outputs_are_written(tmp_path):
    result = make_pipeline()(make_example())
    paths = write_result(result, tmp_path, config={"k": 1})
    video = media.decode_video(paths["video"])
    assert video.shape == (9, 64, 64, 3)
    assert media.decode_video(paths["side_by_side"]).shape == (9, 64, 192, 3)
    assert media.decode_image(open(paths["grid"], "rb").read()).shape == (4 * 64, 192, 3)
    assert '"seed": 0' in open(paths["meta"]).read()
    assert not torch.equal(torch.from_numpy(video).permute(3, 0, 1, 2), result.video)  # CRF 18 by default: lossy
    exact = write_result(result, tmp_path / "lossless", quality="lossless")  # sample.py's video_quality=lossless
    assert torch.equal(torch.from_numpy(media.decode_video(exact["video"])).permute(3, 0, 1, 2), result.video)


def test_video_quality_takes_a_crf_or_lossless_and_names_anything_else():
    assert media.video_quality("lossless") == "lossless"
    assert media.video_quality("18") == 18 and media.video_quality(0) == 0 and media.video_quality(51) == 51
    for bad in ("52", -1, "crf18", True, 18.0):
        with pytest.raises(ValueError, match="video quality must be 'lossless' or a CRF int"):
            media.video_quality(bad)


@pytest.mark.parametrize("style", ["peft", "comfy", "kohya"])
def test_merged_lora_equals_unmerged_adapter_forward(style, tmp_path):
    peft = pytest.importorskip("peft")
    from tests.conftest import make_inputs

    base = randomize_(SCAILDiT(tiny_config()), seed=4)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    targets = ["self_attn.q", "self_attn.v", "cross_attn.o", "ffn.0"]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    adapted = peft.get_peft_model(base, config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    inputs = make_inputs(batch=1)
    expected = adapted(inputs)
    adapters = {}
    for name, module in adapted.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            adapters[name] = (
                module.lora_A["default"].weight.detach(),
                module.lora_B["default"].weight.detach(),
            )
    assert len(adapters) == 4 * 2  # 2 blocks
    export_lora(adapters, alpha=8, path=tmp_path / "lora.safetensors", style=style)
    fresh = SCAILDiT(tiny_config())
    fresh.load_state_dict(state)
    assert merge_lora(fresh, tmp_path / "lora.safetensors") == 8
    assert (fresh(inputs) - expected).abs().max().item() < 1e-5
    without = SCAILDiT(tiny_config())
    without.load_state_dict(state)  # the same base weights, no LoRA: the merge must have changed the output
    assert (fresh(inputs) - without(inputs)).abs().max().item() > 1e-3


def test_lora_files_that_match_nothing_are_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"diffusion_model.blocks.0.nope.lora_down.weight": torch.zeros(2, 4)}, str(tmp_path / "x.safetensors")
    )
    with pytest.raises(ValueError, match="match no module"):
        merge_lora(SCAILDiT(tiny_config()), tmp_path / "x.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read"):
        merge_lora(SCAILDiT(tiny_config()), tmp_path / "bad.safetensors")


def write_folder(root, frames=9, mask_frames=None, mask_name="rendered_mask_v2.mp4", size=64):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    (root / "ref.png").write_bytes(media.encode_image(img))
    (root / "ref_mask.png").write_bytes(media.encode_image(np.zeros_like(img)))
    video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    (root / "rendered_v2.mp4").write_bytes(media.encode_video(video, 8.0))
    mask = np.zeros((mask_frames or frames, size, size, 3), dtype=np.uint8)
    (root / mask_name).write_bytes(media.encode_video(mask, 8.0))
    (root / "prompt.txt").write_text("a dancer\n")
    return root


def test_load_example_reads_a_scail2_folder_and_infers_the_mode(tmp_path):
    ex = load_example(write_folder(tmp_path / "a"))
    assert ex.mode == "animate" and ex.prompt == "a dancer" and ex.fps == pytest.approx(8.0)
    assert ex.driving.shape == (3, 9, 64, 64) and ex.driving_mask.shape == (3, 9, 64, 64)
    assert load_example(write_folder(tmp_path / "b", mask_name="replace_mask.mp4")).mode == "replace"


def test_sampling_takes_the_mode_by_the_loaders_rule(tmp_path):
    """One folder reader for training and sampling: a meta.json mode wins over the mask file name in both."""
    import json

    from scail_lab.data.folders import collect_folder, read_meta

    folder = write_folder(tmp_path / "a")  # rendered_mask_v2.mp4: animate by name
    (folder / "meta.json").write_text(json.dumps({"mode": "replace"}))
    assert read_meta(collect_folder(folder))["mode"] == "replace"  # what training reads
    assert load_example(folder).mode == "replace"  # and sampling
    assert load_example(folder, mode="animate").mode == "animate"  # an explicit mode still wins
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        load_example(folder)


def test_paste_back_refuses_a_pose_render_in_replacement_before_any_model_work(tmp_path, monkeypatch):
    """A replacement whose driving input is a pose render (meta.json driving_kind=pose, or sample.py's
    driving_kind=pose for explicit paths) would paste the render's background over the scene: refused by the
    pipeline and, before any model is built, by sample.py; without paste-back it samples."""
    import json

    from hydra import compose, initialize_config_dir

    import sample
    from scail_lab import build
    from tests.conftest import CONFIGS

    folder = write_folder(tmp_path / "pose_replace", mask_name="replace_mask.mp4")
    (folder / "meta.json").write_text(json.dumps({"driving_kind": "pose"}))
    example = load_example(folder)
    assert (example.mode, example.driving_kind) == ("replace", "pose")
    assert load_example(write_folder(tmp_path / "plain")).driving_kind == "video"
    with pytest.raises(ValueError, match="driving_kind must be one of"):
        load_example(folder, driving_kind="render")
    model = CountingModel(SCAILDiT(tiny_config()))
    with pytest.raises(ValueError, match="pose render"):
        make_pipeline(model, paste_back=True)(example)
    assert model.batches == []
    assert make_pipeline(paste_back=True)(example.replace(mode="animate"), seed=0).video.shape == (3, 9, 64, 64)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(sample, "build_model", no_model)
    monkeypatch.setattr(build, "build_model", no_model)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", overrides=["model=tiny", "weights=null", "vae.path=null", f"inputs=[{folder}]",
                                           "pipeline.paste_back=true", "pipeline.progress=false"])  # fmt: skip
        explicit = compose("sample", overrides=[
            "model=tiny", "weights=null", "vae.path=null", f"image={folder / 'ref.png'}",
            f"mask_image={folder / 'ref_mask.png'}", f"pose={folder / 'rendered_v2.mp4'}",
            f"mask_video={folder / 'replace_mask.mp4'}", "driving_kind=pose", "pipeline.paste_back=true"])  # fmt: skip
    for config in (cfg, explicit):
        with pytest.raises(ValueError, match="pose render"):
            sample.run(config, tmp_path / "samples")


def test_bad_inputs_fail_before_any_model_work(tmp_path):
    model = CountingModel(SCAILDiT(tiny_config()))
    pipe = make_pipeline(model)
    with pytest.raises(FileNotFoundError, match="reference image"):
        load_example(tmp_path)
    broken = write_folder(tmp_path / "broken")
    (broken / "rendered_v2.mp4").write_bytes(b"\x00\x01 not an mp4")
    with pytest.raises(ValueError, match="rendered_v2.mp4"):
        load_example(broken)
    with pytest.raises(ValueError, match="frames"):
        load_example(write_folder(tmp_path / "mismatch", mask_frames=5))
    with pytest.raises(ValueError, match="multiples of 32"):
        make_pipeline(model, height=48)
    with pytest.raises(ValueError, match="ref_mask"):
        pipe(make_example().replace(ref_mask=None))
    assert model.batches == []


def test_lightx2v_diff_and_diffusers_kohya_names_and_stacking(tmp_path):
    from safetensors.torch import save_file

    base = randomize_(SCAILDiT(tiny_config()), seed=2)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    diff, diff_b = torch.randn(128, 64, generator=g), torch.randn(128, generator=g)
    save_file({
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(8.0),  # scale alpha / rank = 2
        "diffusion_model.blocks.1.ffn.0.diff": diff,
        "diffusion_model.blocks.1.ffn.0.diff_b": diff_b,
    }, str(tmp_path / "comfy.safetensors"))  # fmt: skip
    save_file({"transformer.blocks.1.attn2.add_k_proj.lora_A.weight": down,  # diffusers names
               "transformer.blocks.1.attn2.add_k_proj.lora_B.weight": up}, str(tmp_path / "diffusers.safetensors"))
    save_file({"lora_unet_blocks_0_cross_attn_o.lora_down.weight": down,  # kohya / musubi names
               "lora_unet_blocks_0_cross_attn_o.lora_up.weight": up}, str(tmp_path / "kohya.safetensors"))
    merge_lora(base, tmp_path / "comfy.safetensors", strength=0.5)
    merge_lora(base, tmp_path / "diffusers.safetensors", strength=1.0)
    merge_lora(base, tmp_path / "kohya.safetensors", strength=2.0)
    new = base.state_dict()
    torch.testing.assert_close(new["blocks.0.self_attn.q.weight"], state["blocks.0.self_attn.q.weight"] + 0.5 * 2 * up @ down)
    torch.testing.assert_close(new["blocks.1.ffn.0.weight"], state["blocks.1.ffn.0.weight"] + 0.5 * diff)
    torch.testing.assert_close(new["blocks.1.ffn.0.bias"], state["blocks.1.ffn.0.bias"] + 0.5 * diff_b)
    torch.testing.assert_close(new["blocks.1.cross_attn.k_img.weight"], state["blocks.1.cross_attn.k_img.weight"] + up @ down)
    torch.testing.assert_close(new["blocks.0.cross_attn.o.weight"], state["blocks.0.cross_attn.o.weight"] + 2 * up @ down)
    untouched = [k for k in state if not any(m in k for m in ("self_attn.q.weight", "ffn.0", "k_img.weight", "cross_attn.o.weight"))]
    assert all(torch.equal(new[k], state[k]) for k in untouched)


def test_resident_bf16_weights_sample_on_a_cpu_close_to_fp32():
    """weights_dtype=bfloat16 with precision bf16 on a CPU (a LayerNorm with bf16 weights met fp32 CLIP tokens and
    stopped with "mixed dtype (CPU)"): the video matches the fp32 one to bf16 accuracy."""
    import copy

    model = randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02)
    reference = make_pipeline(copy.deepcopy(model), num_steps=2)(make_example(), seed=0).video.float()
    bf16 = make_pipeline(copy.deepcopy(model).to(torch.bfloat16), num_steps=2, precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    video = bf16(make_example(), seed=0).video.float()
    assert video.shape == reference.shape
    assert (video - reference).abs().mean().item() < 0.5  # uint8 levels (measured 0.12); a dtype mix-up gives tens
    assert not torch.equal(video, reference)  # the weights really were bf16


def test_auto_precision_is_bf16_only_where_the_device_multiplies_it_fast(monkeypatch):
    """precision=auto: bf16 autocast on a CPU with bf16 units, fp32 elsewhere; the result names what ran; resident bf16
    weights take bf16 whatever the CPU (fp32 would mix dtypes)."""
    from scail_lab import hardware

    model = randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02)
    for has_units, resolved in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda has=has_units: has)
        pipe = make_pipeline(model, num_steps=1, precision="auto")
        assert pipe.precision == resolved
        assert pipe(make_example(), seed=0).precision == resolved
    assert not hardware.bf16_is_fast(torch.device("meta"))
    with pytest.raises(ValueError, match="precision must be one of"):
        make_pipeline(model, precision="fp16")


def test_step_cache_skips_steps_reuses_residuals_and_is_exact_when_off():
    """threshold 0: identical to no caching; a large threshold skips every step after the first up to max_skips
    (3), reusing the last residual; the counts reach the result."""
    from scail_lab.model.step_cache import StepCache

    model = randomize_(SCAILDiT(tiny_config()), seed=0, std=0.02)
    plain = make_pipeline(model, num_steps=6)(make_example(), seed=0)
    assert plain.step_cache == []
    calls = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        cached = make_pipeline(model, num_steps=6, step_cache_threshold=1e9)(make_example(), seed=0)
    finally:
        handle.remove()
    (stats,) = cached.step_cache
    assert {k: stats[k] for k in ("steps", "computed", "skipped", "threshold")} == {
        "steps": 6, "computed": 2, "skipped": 4, "threshold": 1e9}  # steps 1 and 5 computed
    assert len(stats["changes"]) == 5 and len(stats["residual_changes"]) == 1  # calibration data
    assert len(calls) == 2  # the block stack ran twice
    assert not torch.equal(cached.video, plain.video)
    cache = StepCache(0.05)
    x, residual_steps = torch.randn(1, 4, 8), []
    for step in range(4):  # the indicator changes by 1% a step: skipped until the sum reaches 5%
        residual_steps.append(cache.should_compute(x * (1 + 0.01 * step)))
        cache.store(x, x + 1)
    assert residual_steps == [True, False, False, False] and cache.changes == pytest.approx([0.01, 0.0099, 0.0098], rel=0.02)
