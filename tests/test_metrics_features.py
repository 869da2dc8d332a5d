"""FID / FVD / FID-VID / LPIPS pipelines with stand-in networks loaded from files, like real weights.

Each stand-in is written to a tmp file in the format of the real weights (TorchScript for the Inception and I3D
files, torchvision / Hara state dicts for LPIPS and the 3D-ResNet) and loaded through the metric's own
file-path code. Stand-ins compute known functions (channel means), so the expected distances follow from the
frame colours in closed form.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scail_lab.metrics import FID, FIDVID, FVD, LPIPS, FeatureStats, frechet_distance
from scail_lab.metrics.distribution import KINETICS_MEAN_255, resize_frames
from scail_lab.metrics.extractors import ResNet3D50
from scail_lab.metrics.lpips import LPIPSNetwork, build_features, bundled_heads_path

# the stand-ins are written with torch.jit.script (deprecated in torch, still what the real weight files are)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class StandInI3D(nn.Module):
    """I3D call convention; features: per-channel clip mean and per-channel mean of the centre pixel."""

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("FVD must call the I3D with rescale=False, resize=False, return_features=True")
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected [B, 3, 16, 224, 224]")
        return torch.cat([x.mean(dim=(2, 3, 4)), x[:, :, :, 112, 112].mean(dim=2)], dim=1)


class StandInInception(nn.Module):
    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        if x.dtype != torch.uint8 or not return_features:
            raise RuntimeError("FID must pass uint8 frames with return_features=True")
        return x.float().mean(dim=(2, 3))


class StandInVideoNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] != 16 or x.shape[3] != 112:
            raise RuntimeError("expected [S, 3, 16, 112, 112]")
        return x.mean(dim=(2, 3, 4))


def _script(module: nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


def _colour_video(colours: np.ndarray, h: int = 48, w: int = 72) -> np.ndarray:
    """[N, 3] colours -> uint8 [N, h, w, 3] frames filled with them."""
    return np.broadcast_to(colours[:, None, None, :], (len(colours), h, w, 3)).astype(np.uint8).copy()


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def test_fvd_pipeline_with_standin(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = _script(StandInI3D(), tmp_path / "i3d_torchscript.pt")
    metric = FVD(weights=path)
    feats = {"pred": [], "target": []}
    for i in range(5):
        for side in ("pred", "target"):
            colour = rng.integers(0, 256, 3)
            video = _colour_video(np.tile(colour, (20, 1)))
            video[16:] = 255 - video[16:]  # frames past the 16-frame clip must not count
            video[:, :, :10] = 0  # left / right stripes fall outside the 224 centre crop
            video[:, :, -10:] = 255
            feats[side].append(np.tile(colour / 127.5 - 1.0, 2))
            if side == "pred":
                pred = video
        metric.update(pred, video, sample_id=str(i))
    result = metric.compute()
    expected = _fd(np.array(feats["pred"]), np.array(feats["target"]))
    assert result.value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert result.value > 0.05
    assert result.protocol["clip_frames"] == 16 and result.protocol["resolution"] == 224
    assert result.protocol["num_pred"] == 5 and result.protocol["weights"] == "i3d_torchscript.pt"
    assert result.protocol["weights_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(ValueError, match="10 frames, the protocol needs 16"):
        metric.update(_colour_video(np.zeros((10, 3))), None)


def test_centre_crop_resize_geometry() -> None:
    frames = torch.zeros(1, 3, 48, 72)
    frames[..., 10:62] = 200.0  # centre band; the crop maps to source columns ~11.5..59.4
    out = resize_frames(frames, 224, "center_crop")
    assert out.shape == (1, 3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 200.0), atol=1e-3)
    tall = resize_frames(torch.zeros(2, 3, 90, 30), 224, "center_crop")
    assert tall.shape == (2, 3, 224, 224)
    assert resize_frames(torch.zeros(1, 3, 48, 72), 224, "squash").shape == (1, 3, 224, 224)


def test_fid_pipeline_with_standin(tmp_path) -> None:
    rng = np.random.default_rng(1)
    metric = FID(weights=_script(StandInInception(), tmp_path / "inception-2015-12-05.pt"), frame_stride=2)
    pred_cols, target_cols = [], []
    for i in range(3):
        pc, tc = rng.integers(0, 256, (6, 3)), rng.integers(0, 256, (6, 3))
        metric.update(_colour_video(pc, 20, 20), _colour_video(tc, 20, 20), sample_id=str(i))
        pred_cols.append(pc[::2])
        target_cols.append(tc[::2])
    result = metric.compute()
    expected = _fd(np.concatenate(pred_cols).astype(float), np.concatenate(target_cols).astype(float))
    assert result.value == pytest.approx(expected, rel=1e-9)
    assert result.protocol["num_pred"] == 9 and result.protocol["frame_stride"] == 2


def test_fid_vid_pipeline_pads_last_segment(tmp_path) -> None:
    metric = FIDVID(weights=_script(StandInVideoNet(), tmp_path / "video_net.pt"))
    rng = np.random.default_rng(2)
    mean = np.array(KINETICS_MEAN_255)
    pred_feats, target_feats = [], []
    for i in range(4):
        a, b, c = rng.integers(0, 256, (3, 3))
        pred = _colour_video(np.array([a] * 16 + [b] * 4), 40, 40)  # 2 segments; the 2nd padded with b
        target = _colour_video(np.array([c] * 16), 40, 40)
        metric.update(pred, target, sample_id=str(i))
        pred_feats.append((a + b) / 2.0 - mean)
        target_feats.append(c - mean)
    result = metric.compute()
    assert result.value == pytest.approx(_fd(np.array(pred_feats), np.array(target_feats)), rel=1e-4)


@pytest.fixture(scope="module")
def hara_checkpoint(tmp_path_factory) -> tuple[ResNet3D50, str]:
    torch.manual_seed(0)
    model = ResNet3D50().eval()
    path = tmp_path_factory.mktemp("hara") / "resnet-50-kinetics.pth"
    torch.save(
        {"arch": "resnet-50", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    return model, str(path)


def test_fid_vid_loads_hara_resnet50_layout(hara_checkpoint, tmp_path) -> None:
    model, path = hara_checkpoint
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.weight"} <= set(
        model.state_dict()
    )
    metric = FIDVID(weights=path, resolution=16)
    loaded = metric.extractor.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert metric.protocol()["clip_frames"] == 16
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a 3D-ResNet-50"):
        FIDVID(weights=tmp_path / "bad.pth")


@pytest.mark.slow
def test_fid_vid_resnet50_features_match_manual_segments(hara_checkpoint) -> None:
    model, path = hara_checkpoint
    metric = FIDVID(weights=path, resolution=16)
    video = np.random.default_rng(3).integers(0, 256, (17, 16, 16, 3)).astype(np.uint8)
    feats = metric.features(torch.from_numpy(video).permute(0, 3, 1, 2).float())
    padded = torch.cat(
        [torch.from_numpy(video).float(), torch.from_numpy(video[-1:]).float().expand(15, -1, -1, -1)]
    )
    clips = (
        (padded - torch.tensor(KINETICS_MEAN_255))
        .permute(3, 0, 1, 2)
        .reshape(3, 2, 16, 16, 16)
        .transpose(0, 1)
    )
    expected = model(clips).mean(dim=0, keepdim=True)  # resizing 16x16 to 16x16 is the identity
    assert feats.shape == (1, 2048)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


def test_missing_weights_error_or_recorded_skip(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCAIL_EVAL_WEIGHTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        FVD(weights=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        FID()
    skipped = FVD(on_missing="skip")
    skipped.update(_colour_video(np.zeros((16, 3))), _colour_video(np.zeros((16, 3))))
    result = skipped.compute()
    assert result.value is None and "i3d_torchscript.pt" in result.skipped
    # found through the weights directory variable
    _script(StandInI3D(), tmp_path / "i3d_torchscript.pt")
    monkeypatch.setenv("SCAIL_EVAL_WEIGHTS_DIR", str(tmp_path))
    assert FVD().skipped is None
    with pytest.raises(ValueError, match="sha256"):
        FVD(sha256="0" * 64)
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not TorchScript"):
        FVD(weights=tmp_path / "garbage.pt")


# ---------------------------------------------------------------- LPIPS


def _write_lpips_files(tmp_path, net: str = "alex") -> tuple[str, str]:
    torch.manual_seed(0)
    features, _, channels = build_features(net)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    torch.save(state, tmp_path / "backbone.pth")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(channels)}
    torch.save(heads, tmp_path / "heads.pth")
    return str(tmp_path / "backbone.pth"), str(tmp_path / "heads.pth")


def _lpips_reference(x: Tensor, y: Tensor, backbone: dict, heads: dict) -> Tensor:
    """float64 LPIPS(alex) written out layer by layer from the two state dicts."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(z: Tensor) -> list[Tensor]:
        w = {k: v.double() for k, v in backbone.items()}
        z = (z - shift) / scale
        r1 = F.relu(F.conv2d(z, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        r2 = F.relu(F.conv2d(F.max_pool2d(r1, 3, 2), w["features.3.weight"], w["features.3.bias"], padding=2))
        r3 = F.relu(F.conv2d(F.max_pool2d(r2, 3, 2), w["features.6.weight"], w["features.6.bias"], padding=1))
        r4 = F.relu(F.conv2d(r3, w["features.8.weight"], w["features.8.bias"], padding=1))
        r5 = F.relu(F.conv2d(r4, w["features.10.weight"], w["features.10.bias"], padding=1))
        return [r1, r2, r3, r4, r5]

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(taps(x.double()), taps(y.double()), strict=True)):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += ((a - b) ** 2 * heads[f"lin{k}.model.1.weight"].double()).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_alex_matches_reference_from_files(tmp_path) -> None:
    backbone, heads = _write_lpips_files(tmp_path)
    metric = LPIPS(net="alex", weights=backbone, heads=heads)
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (4, 3, 64, 64), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 256, (4, 3, 64, 64), generator=gen, dtype=torch.uint8)
    assert metric.update(x, x, sample_id="same") == pytest.approx(0.0, abs=1e-9)
    value = metric.update(x, y, sample_id="diff")
    ref = _lpips_reference(
        x.double() / 127.5 - 1, y.double() / 127.5 - 1, torch.load(backbone), torch.load(heads)
    )
    assert value == pytest.approx(float(ref.mean()), rel=1e-4)
    assert value > 0.01
    assert metric.update(y, x, sample_id="swap") == pytest.approx(value, rel=1e-5)  # symmetric
    result = metric.compute()
    assert result.protocol["backbone"] == "alex" and result.protocol["weights"] == "backbone.pth"
    assert result.name == "lpips_alex" and result.higher_is_better is False


def test_lpips_bundled_heads_missing_backbone_and_vgg_layout(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCAIL_EVAL_WEIGHTS_DIR", raising=False)
    backbone, _ = _write_lpips_files(tmp_path)
    bundled = bundled_heads_path("alex")
    assert bundled is not None  # torchmetrics is a dev dependency and ships the v0.1 heads
    metric = LPIPS(net="alex", weights=backbone)
    assert metric.protocol()["heads_sha256"] == hashlib.sha256(bundled.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPS(net="vgg")
    skipped = LPIPS(net="vgg", on_missing="skip")
    assert skipped.update(np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 16, 16, 3), np.uint8)) is None
    assert "vgg16-397923af.pth" in skipped.compute().skipped
    with pytest.raises(ValueError, match="torchvision layout"):
        LPIPS(net="vgg", weights=backbone)  # an AlexNet file offered as VGG16
    vgg = LPIPSNetwork("vgg")
    conv_keys = {k.split(".")[0] for k in vgg.features.state_dict()}
    assert conv_keys == {"0", "2", "5", "7", "10", "12", "14", "17", "19", "21", "24", "26", "28"}
    assert vgg.channels == [64, 128, 256, 512, 512]
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    out = vgg(x, y)
    assert out.shape == (2,) and (out > 0).all()  # the VGG taps see a difference ...
    torch.testing.assert_close(vgg(y, x), out)  # ... symmetrically
    assert vgg(x, x).abs().max() < 1e-9  # and none between an image and itself


def test_feature_stats_match_numpy_in_any_chunking() -> None:
    rows = np.random.default_rng(0).normal(size=(37, 5))
    stats = FeatureStats()
    for chunk in np.array_split(rows, [3, 4, 20]):  # uneven chunks, one of a single row
        stats.update(chunk)
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean.numpy(), rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(rows, rowvar=False), rtol=1e-10)


def test_fid_loads_pytorch_fid_inception_layout(tmp_path) -> None:
    from scail_lab.metrics.inception import FIDInceptionV3, _avg_pool

    torch.manual_seed(0)
    model = FIDInceptionV3()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    # torchvision Inception3 without the aux head has 23,834,568 parameters with 1000 classes; pytorch-fid's
    # 1008-class fc adds 8 * 2048 + 8
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == 23_834_568 + 8 * 2049
    shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)  # the ported file carries no num_batches_tracked entries
    metric = FID(weights=path)
    assert "pytorch-fid" in metric.protocol()["implementation"]
    assert torch.equal(
        metric.extractor.state_dict()["Mixed_6d.branch7x7_2.conv.weight"],
        state["Mixed_6d.branch7x7_2.conv.weight"],
    )
    # TF-style average pooling ignores the zero padding: a constant map stays constant at the corners
    assert torch.equal(_avg_pool(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))
    del state["Mixed_7c.branch_pool.bn.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="not pytorch-fid's Inception"):
        FID(weights=tmp_path / "broken.pth")


@pytest.mark.slow
def test_fid_inception_forward_shape_and_pooling() -> None:
    from scail_lab.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    frames = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    feats = model(frames)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # ReLU then mean
    torch.testing.assert_close(model(frames[:1]), feats[:1], rtol=1e-4, atol=1e-5)


def test_reference_stats_cache_is_written_reused_and_checked(tmp_path) -> None:
    weights = _script(StandInI3D(), tmp_path / "i3d_torchscript.pt")
    rng = np.random.default_rng(7)
    preds = [_colour_video(np.tile(rng.integers(0, 256, 3), (16, 1))) for _ in range(4)]
    targets = [_colour_video(np.tile(rng.integers(0, 256, 3), (16, 1))) for _ in range(4)]
    cache = tmp_path / "gt_fvd.npz"
    first = FVD(weights=weights, reference_stats=cache)
    for p, t in zip(preds, targets, strict=True):
        first.update(p, t)
    value = first.compute().value
    assert cache.is_file()
    second = FVD(weights=weights, reference_stats=cache)
    assert second.target_stats.count == 4
    for p in preds:
        second.update(p, np.zeros_like(p))  # ground truth ignored: its statistics come from the cache
    assert second.compute().value == pytest.approx(value, rel=1e-12)
    second.reset()
    assert second.target_stats.count == 4 and second.pred_stats.count == 0  # a new run reloads the cache
    with pytest.raises(ValueError, match="another protocol.*clip_frames"):
        FVD(weights=weights, reference_stats=cache, num_frames=8)
