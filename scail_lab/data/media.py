"""Encode and decode the media of a motion pair: mp4 videos (ffmpeg out, decord in) and jpg/png images.

Frames are numpy uint8 RGB: videos [N, H, W, 3], images [H, W, 3].

Video codecs (encoded in-process with PyAV):
- `lossless` (default for masks): H.264 in RGB (`libx264rgb`, qp 0). decord decodes it back bit-exactly,
  so palette colours of mask videos survive encoding everywhere, including the edges.
- `crf` (an int 0..51): ordinary yuv420p H.264 at that CRF (what real data usually is). Chroma
  subsampling blends colours at edges; interiors of flat colours survive.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from scail_lab.files import current_umask, replace_folder
from scail_lab.hardware import x264_asm

LOSSLESS = "lossless"


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def video_quality(value: str | int) -> str | int:
    """`value` as `encode_video` takes it: "lossless", or a yuv420p CRF int in [0, 51] (also as a digit string, the
    way Hydra overrides and `--set` pass it). Anything else raises, naming the value, before any work."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == LOSSLESS or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 51):
        return value
    raise ValueError(f"video quality must be 'lossless' or a CRF int in [0, 51], got {value!r}")


def encode_video(frames: np.ndarray, fps: float, quality: str | int = LOSSLESS) -> bytes:
    """[N, H, W, 3] uint8 RGB -> mp4 bytes (in-process PyAV). `quality`: "lossless" or a yuv420p CRF (0..51)."""
    import av

    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n, h, w, _ = frames.shape
    quality = video_quality(quality)
    if quality == LOSSLESS:
        codec, pix_fmt, options = "libx264rgb", "rgb24", {"qp": "0"}
    else:
        if h % 2 or w % 2:
            raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w}")
        codec, pix_fmt, options = "libx264", "yuv420p", {"crf": str(quality)}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        asm = x264_asm()  # capped below AVX-512, whose x264 routines do not repeat their output
        stream.options = {**options, "preset": "veryfast", "threads": "1",
                          "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0" + (f":asm={asm}" if asm else "")}  # fmt: skip
        stream.codec_context.thread_count = 1  # one encoder thread (threaded x264 output depends on scheduling)
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index  # explicit timestamps (codec time base 1/fps)
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return buf.getvalue()


def _reader(data: bytes | str | Path):
    import decord

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    try:
        return decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError for unreadable streams
        raise ValueError(f"unreadable video: {exc}".splitlines()[0]) from exc


def probe_video(data: bytes | str | Path) -> VideoInfo:
    """Frame count, fps and size from the container (cheap: no full decode)."""
    reader = _reader(data)
    num_frames = len(reader)
    if num_frames == 0:
        raise ValueError("video has no frames")
    h, w = reader[0].shape[:2]
    return VideoInfo(num_frames=num_frames, fps=float(reader.get_avg_fps()), height=int(h), width=int(w))


def decode_video(data: bytes | str | Path, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
    """mp4 bytes or path -> [n, H, W, 3] uint8 RGB frames (all frames, or `indices`)."""
    reader = _reader(data)
    total = len(reader)
    idx = list(range(total)) if indices is None else [int(i) for i in indices]
    if not idx:
        raise ValueError("no frame indices to decode")
    if min(idx) < 0 or max(idx) >= total:
        raise ValueError(
            f"frame index out of range: video has {total} frames, asked for {min(idx)}..{max(idx)}"
        )
    try:
        frames = reader.get_batch(idx).asnumpy()
    except Exception as exc:
        raise ValueError(f"video frames could not be decoded: {exc}".splitlines()[0]) from exc
    return frames


def encode_image(image: np.ndarray, ext: str = ".png", jpeg_quality: int = 95) -> bytes:
    """[H, W, 3] uint8 RGB -> encoded bytes (`.png` lossless or `.jpg`)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    import cv2  # imported where used: sampling from tensors runs without OpenCV (the GPU kit)

    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {ext}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """jpg/png bytes -> [H, W, 3] uint8 RGB (grey images are expanded to 3 channels)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("unreadable image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def atomic_write_folder(files: dict[str, bytes], folder: str | Path) -> Path:
    """Write a sample folder atomically: fill a temp sibling directory, then rename it into place (an existing
    `folder` is replaced; a failure leaves neither a half-written folder nor the temp directory)."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a sample folder is an ordinary directory
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder
