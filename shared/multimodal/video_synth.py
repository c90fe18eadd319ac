"""Synthetic videos for tests and load generation, written in memory with PyAV.

Every frame has its own deterministic content (a moving gradient under blocky noise drawn from
``seed`` and the frame index), so a wrong frame index shows up as a pixel difference. Also holds
the corpus of bad inputs that every layer that takes videos (probe, decode, HTTP) is tested with.

Encoders shipped in the PyAV wheel and used here: ``mpeg4`` (MP4/AVI), ``libx264`` (MP4/MKV),
``libvpx-vp9`` and ``vp8`` (WebM), ``mjpeg`` (AVI).
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image

from shared.multimodal.video_io import VideoLimits

_MUXERS = {
    "mp4": "mp4",
    "mov": "mov",
    "webm": "webm",
    "mkv": "matroska",
    "matroska": "matroska",
    "avi": "avi",
}


def frame_pixels(index: int, width: int, height: int, seed: int = 0, variant: int = 0) -> np.ndarray:
    """[height, width, 3] uint8: the content of frame ``index`` (``variant`` changes it)."""
    rng = np.random.default_rng([seed, index, variant])
    yy, xx = np.mgrid[0:height, 0:width]
    shift = 9 * index + 40 * variant
    base = np.stack([(xx * 4 + shift) % 256, (yy * 4 + 2 * shift) % 256, (xx + yy + 3 * shift) % 256], -1)
    blocks = rng.integers(-60, 60, ((height + 7) // 8, (width + 7) // 8, 3))
    noise = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:height, :width]  # 8x8 blocks survive compression
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_video(
    frames: int,
    width: int,
    height: int,
    fps: float = 4.0,
    codec: str = "mpeg4",
    container: str = "mp4",
    seed: int = 0,
    vary_frame: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode ``frames`` distinct frames; ``vary_frame`` gives that one frame other pixels."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_MUXERS.get(container, container), options=options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast"}
        for i in range(frames):
            rgb = frame_pixels(i, width, height, seed, variant=int(i == vary_frame))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def moov_first(mp4: bytes) -> bytes:
    """The same MP4 with its index (``moov``) before the media data, as streaming files have it.

    PyAV cannot rewrite a file in memory (``movflags=faststart`` reopens it by name), so the
    top-level boxes are reordered here and the chunk offsets in ``stco`` shifted to match.
    """
    boxes: dict[bytes, bytes] = {}
    offset = 0
    while offset < len(mp4):
        size, kind = struct.unpack(">I4s", mp4[offset : offset + 8])
        boxes[kind] = mp4[offset : offset + size]
        offset += size
    ftyp, moov, mdat = boxes[b"ftyp"], bytearray(boxes[b"moov"]), boxes[b"mdat"]
    shift = len(ftyp) + len(moov) - mp4.index(mdat)
    at = moov.find(b"stco")
    while at >= 0:
        (count,) = struct.unpack(">I", moov[at + 8 : at + 12])
        for entry in range(at + 12, at + 12 + 4 * count, 4):
            moov[entry : entry + 4] = struct.pack(
                ">I", struct.unpack(">I", moov[entry : entry + 4])[0] + shift
            )
        at = moov.find(b"stco", at + 12)
    return ftyp + bytes(moov) + mdat


def make_frame_list(
    frames: int, width: int, height: int, fmt: str = "PNG", seed: int = 0, vary_frame: int | None = None
) -> list[bytes]:
    """A video as encoded stills (PNG or JPEG), the same content ``make_video`` encodes."""
    out = []
    for i in range(frames):
        buf = io.BytesIO()
        Image.fromarray(frame_pixels(i, width, height, seed, variant=int(i == vary_frame))).save(buf, fmt)
        out.append(buf.getvalue())
    return out


def audio_only(container: str = "mp4", codec: str = "aac", seconds: float = 0.25) -> bytes:
    """A file holding one silent audio stream and nothing else."""
    rate = 16_000
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, AudioStream)
        samples, chunk = int(rate * seconds), 1024
        fmt, dtype = ("s16", np.int16) if codec.startswith("pcm_s16") else ("fltp", np.float32)
        for start in range(0, samples, chunk):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), dtype), format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def empty_video_stream(container: str = "avi") -> bytes:
    """A container whose video stream has no packets (only headers are written)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_MUXERS.get(container, container)) as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    return buf.getvalue()


def _image(fmt: str, width: int = 32, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def bad_video_corpus() -> list[tuple[str, bytes, str]]:
    """(name, data, message substring): inputs ``probe_video`` refuses under the default limits."""
    mp4 = make_video(8, 64, 48)
    mkv = make_video(8, 64, 48, codec="libx264", container="mkv")
    streaming = moov_first(mp4)
    # AVI names its codec by a four-character code; one no decoder knows leaves the stream codec-less.
    unknown_codec = make_video(4, 64, 48, container="avi").replace(b"FMP4", b"QQQQ")
    return [
        ("empty", b"", "video data is empty"),
        ("random bytes", np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes(), "unrecognised"),
        ("text", b"hello, this is not a video\n" * 20, "unrecognised video container"),
        ("png image", _image("PNG"), "PNG image, not a video"),
        ("jpeg image", _image("JPEG"), "JPEG image, not a video"),
        ("hls playlist", b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n", "unrecognised video container"),
        ("mp4 first half", mp4[: len(mp4) // 2], "malformed or truncated MP4/MOV"),
        ("mp4 first 200 bytes", mp4[:200], "malformed or truncated MP4/MOV"),
        ("moov-first mp4 cut short", streaming[: len(streaming) * 2 // 3], "MP4/MOV file is truncated"),
        ("moov-first mp4, index only", streaming[: streaming.index(b"mdat") + 4], "holds 0"),
        ("mkv first 100 bytes", mkv[:100], "malformed or truncated WebM/Matroska"),
        ("audio-only mp4 (aac)", audio_only("mp4", "aac"), "no video stream (it holds only audio"),
        ("audio-only wav", audio_only("wav", "pcm_s16le"), "WAV audio file, not a video"),
        ("audio-only mp3", audio_only("mp3", "mp3"), "audio file"),
        ("no streams mp4", empty_video_stream("mp4"), "no video stream"),
        ("no video frames avi", empty_video_stream("avi"), "video stream has no frames"),
        ("unknown codec avi", unknown_codec, "no decoder is available"),
        ("too long", make_video(4, 32, 32, fps=1 / 200), "longer than 600 seconds"),
    ]


def bad_video_limit_cases() -> list[tuple[str, bytes, str, VideoLimits]]:
    """(name, data, message substring, limits): refused by ``probe_video`` under small limits."""
    video = make_video(12, 64, 48, fps=4)
    return [
        ("frame too large", video, "the limit is 3000 pixels per frame", VideoLimits(max_frame_pixels=3000)),
        ("too long", video, "longer than 2 seconds", VideoLimits(max_duration_s=2.0)),
        ("too many frames", video, "more than 10 frames", VideoLimits(max_total_frames=10)),
    ]


def corrupt_video_cases() -> list[tuple[str, bytes, str]]:
    """(name, data, message substring): probed fine, refused by ``decode_video`` of every frame."""
    cases = []
    for codec, container in (("mpeg4", "mp4"), ("libx264", "mp4")):
        good = make_video(24, 128, 96, codec=codec, container=container)
        bad = bytearray(good)
        middle = len(bad) // 2  # in the payload of a frame well after the first
        bad[middle : middle + 400] = np.random.default_rng(3).integers(0, 256, 400, np.uint8).tobytes()
        cases.append((f"{codec} payload overwritten", bytes(bad), "corrupt video"))
    return cases


def bad_frame_lists() -> list[tuple[str, list[bytes], str]]:
    """(name, frames, message substring): videos as stills that ``probe_frames`` refuses."""
    png = make_frame_list(3, 32, 32)
    return [
        ("no frames", [], "non-empty list of images"),
        ("mixed sizes", [*png, _image("PNG", 48, 32)], "all frames of a video must have the same size"),
        ("not an image", [png[0], b"plain text, no image here"], "frame 1: unrecognised image format"),
        ("empty frame", [png[0], b""], "frame 1: image data is empty"),
        ("unsupported image format", [png[0], _image("BMP")], "frame 1: unsupported image format BMP"),
    ]
