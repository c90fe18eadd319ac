"""Untrusted video bytes to checked container facts and decoded RGB frames.

Owns the two steps a video takes before preprocessing. The router *probes* (cheap: demux only,
plus one decoded frame) to learn the frame count, rate and size it needs to plan sampling and
count tokens; the encoder *decodes* only the sampled frames, stopping after the last one. A
video is either a container file (MP4/MOV, WebM/Matroska, AVI, MPEG-TS/PS, Ogg, FLV) or a list of
encoded still images with a declared frame rate.

The container format is identified from the magic bytes and forced when opening, so FFmpeg never
probes its other demuxers (playlists and concat scripts among them, which would open other
files). Every failure is a ``VideoError`` with a message a client can read; no PyAV or PIL
exception escapes.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from PIL import Image

from shared.multimodal.image import ImageError, _open_header, decode_image, sniff_format

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.codeccontext import VideoCodecContext
    from av.video.stream import VideoStream

    from shared.multimodal.video import VideoPlan


class VideoError(ValueError):
    """A video that cannot be used: empty, corrupt, unsupported, audio-only or too large."""


@dataclass(frozen=True)
class VideoLimits:
    """What one request may make the server demux and decode."""

    max_frame_pixels: int = 4096 * 4096  # per decoded frame
    max_duration_s: float = 600.0
    max_total_frames: int = 36_000  # frames in the container; bounds demuxing and decoding
    max_decoded_bytes: int = 4 << 30  # the decoded [F, H, W, 3] array decode_* returns


@dataclass(frozen=True)
class VideoInfo:
    """What probing learns without decoding the video (besides its first frame)."""

    total_frames: int
    fps: float
    height: int
    width: int
    codec: str
    duration_s: float
    source: str  # "container" or "frames"


def frame_list_hash(frames: Sequence[bytes]) -> str:
    """SHA-256 hex digest of a video given as encoded stills (count- and length-prefixed)."""
    digest = hashlib.sha256(b"frames:%d:" % len(frames))
    for frame in frames:
        digest.update(len(frame).to_bytes(8, "big"))
        digest.update(frame)
    return digest.hexdigest()


# (FFmpeg demuxer to force, name for messages); WebM is a Matroska profile.
_MP4 = ("mp4", "MP4/MOV")
_CONTAINERS = "MP4/MOV, WebM/Matroska, AVI, MPEG-TS, MPEG-PS, Ogg, FLV"
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _container_format(data: bytes) -> tuple[str, str]:
    """The demuxer the magic bytes call for; images, audio files and the unknown are refused."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        if data[4:8] == b"ftyp" and data[8:12] in _IMAGE_BRANDS:
            raise VideoError("this is a HEIF/AVIF image, not a video; send it as an image")
        return _MP4
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return ("matroska", "WebM/Matroska")
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ("avi", "AVI")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        raise VideoError("this is a WAV audio file, not a video")
    if data[:1] == b"\x47" and data[188:189] == b"\x47":
        return ("mpegts", "MPEG-TS")
    if data.startswith(b"\x00\x00\x01\xba"):
        return ("mpeg", "MPEG-PS")
    if data.startswith(b"OggS"):
        return ("ogg", "Ogg")
    if data.startswith(b"FLV\x01"):
        return ("flv", "FLV")
    if data.startswith((b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"fLaC")):
        raise VideoError("this is an audio file (MP3/FLAC), not a video")
    image = sniff_format(data)
    if image is not None:
        raise VideoError(f"this is a {image} image, not a video; send it as an image")
    raise VideoError(f"unrecognised video container (supported: {_CONTAINERS})")


def _checked_bytes(data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VideoError(f"video data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise VideoError("video data is empty")
    return bytes(data)


def _open(data: bytes, demuxer: str, label: str) -> InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r", format=demuxer)
    except Exception as exc:  # InvalidDataError, EOFError, ... for damaged or truncated files
        raise VideoError(f"malformed or truncated {label} file: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


def _video_stream(container: InputContainer, label: str) -> VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        found = f" (it holds only {', '.join(kinds)} streams)" if kinds else ""
        raise VideoError(f"the {label} file has no video stream{found}")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError(f"unsupported video codec in the {label} file: no decoder is available for it")
    return stream


def _prepare_decoder(stream: VideoStream, limits: VideoLimits) -> VideoCodecContext:
    """Check the frame size the header declares, and make the decoder refuse larger frames."""
    ctx = stream.codec_context
    if ctx.width and ctx.height:  # refused before any decoding where the header says
        _check_frame_size(ctx.width, ctx.height, limits)
    ctx.options = {"max_pixels": str(limits.max_frame_pixels)}
    return ctx


def _frame_rate(stream: VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError("the video does not declare a frame rate")
    return fps


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"the frame rate must be a positive number, got {fps!r}")
    return float(fps)


def _check_frame_size(width: int, height: int, limits: VideoLimits) -> None:
    if width <= 0 or height <= 0:
        raise VideoError(f"video frames have zero size ({width}x{height})")
    if width * height > limits.max_frame_pixels:
        raise VideoError(
            f"video frames are {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_frame_pixels} pixels per frame"
        )


def _check_length(frames: int, fps: float, limits: VideoLimits) -> None:
    if frames > limits.max_total_frames:
        raise VideoError(f"the video has more than {limits.max_total_frames} frames (the limit)")
    if frames / fps > limits.max_duration_s:
        raise VideoError(
            f"the video is longer than {limits.max_duration_s:g} seconds (the limit): "
            f"{frames} frames at {fps:g} fps"
        )


def probe_video(data: bytes, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Frame count, rate, size and codec of a container video; the first frame is decoded as a check.

    The frame count is the number of video packets (no decoding: the container's own count is
    missing from WebM/Matroska); demuxing stops as soon as a limit is crossed.
    """
    data = _checked_bytes(data)
    demuxer, label = _container_format(data)
    container = _open(data, demuxer, label)
    try:
        stream = _video_stream(container, label)
        fps = _frame_rate(stream)
        ctx = _prepare_decoder(stream, limits)
        ctx.thread_count = 1
        demuxed, total, first = 0, 0, None
        for packet in container.demux(stream):
            if not packet.size:  # the demuxer's end-of-stream marker
                continue
            demuxed += 1
            _check_length(demuxed, fps, limits)
            if first is None:
                first = next(iter(ctx.decode(packet)), None)
            if not packet.is_discard:  # else decoded but never shown (outside an MP4 edit list)
                total += 1
        # An MP4 index lists every frame; fewer in the file means it was cut short. (AVI headers
        # count dropped frames too, so theirs is no evidence.)
        if label == _MP4[1] and demuxed < stream.frames:
            raise VideoError(
                f"the {label} file is truncated: it declares {stream.frames} frames but holds {demuxed}"
            )
        if total == 0:
            raise VideoError(f"the {label} file's video stream has no frames")
        if first is None:
            first = next(iter(ctx.decode(None)), None)  # drain the decoder's reorder delay
        if first is None:
            raise VideoError("corrupt video: no frame of it can be decoded")
        if first.is_corrupt:
            raise VideoError("corrupt video: its first frame is damaged")
        _check_frame_size(first.width, first.height, limits)
        return VideoInfo(
            total_frames=total,
            fps=fps,
            height=first.height,
            width=first.width,
            codec=ctx.name,
            duration_s=total / fps,
            source="container",
        )
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"corrupt or truncated {label} video: {_reason(exc)}") from None
    finally:
        container.close()


def probe_frames(frames: Sequence[bytes], fps: float, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """A video given as encoded stills: every header is checked, all sizes must agree."""
    fps = _check_fps(fps)
    if isinstance(frames, (bytes, bytearray, str)) or len(frames) == 0:
        raise VideoError("a video given as frames needs a non-empty list of images")
    _check_length(len(frames), fps, limits)
    size = None
    for index, frame in enumerate(frames):
        try:
            if not isinstance(frame, (bytes, bytearray, memoryview)) or len(frame) == 0:
                raise ImageError("image data is empty or not bytes")
            with _open_header(bytes(frame), limits.max_frame_pixels) as img:
                if size is None:
                    size = img.size
                elif img.size != size:
                    raise VideoError(
                        f"frame {index} is {img.size[0]}x{img.size[1]} but frame 0 is "
                        f"{size[0]}x{size[1]}; all frames of a video must have the same size"
                    )
        except ImageError as exc:
            raise VideoError(f"frame {index}: {exc}") from None
    try:
        decode_image(bytes(frames[0]), max_image_pixels=limits.max_frame_pixels)
    except ImageError as exc:
        raise VideoError(f"frame 0: {exc}") from None
    assert size is not None
    return VideoInfo(len(frames), fps, size[1], size[0], "images", len(frames) / fps, "frames")


class _Frames:
    """The output array, filled in sampled order (an index sampled twice fills two rows)."""

    def __init__(self, plan: VideoPlan, limits: VideoLimits, resample: int | None) -> None:
        self.rows: dict[int, list[int]] = {}
        for row, index in enumerate(plan.indices):
            self.rows.setdefault(index, []).append(row)
        self.count, self.plan, self.limits, self.resample = len(plan.indices), plan, limits, resample
        self.out: np.ndarray | None = None

    def put(self, index: int, rgb: np.ndarray) -> None:
        """Store one decoded [H, W, 3] frame (resized first when a filter was given)."""
        height, width = rgb.shape[:2]
        _check_frame_size(width, height, self.limits)
        if self.resample is not None:
            size = (self.plan.width, self.plan.height)
            rgb = np.asarray(Image.fromarray(rgb).resize(size, resample=self.resample))
        if self.out is None:
            shape = (self.count, *rgb.shape)
            if math.prod(shape) > self.limits.max_decoded_bytes:
                raise VideoError(
                    f"the sampled frames would take {math.prod(shape)} bytes decoded; "
                    f"the limit is {self.limits.max_decoded_bytes}"
                )
            self.out = np.empty(shape, np.uint8)  # [F, H, W, 3]
        elif rgb.shape != self.out.shape[1:]:
            raise VideoError(
                f"the video changes frame size at frame {index} "
                f"({width}x{height}, before {self.out.shape[2]}x{self.out.shape[1]})"
            )
        for row in self.rows[index]:
            self.out[row] = rgb


def decode_video(
    data: bytes, plan: VideoPlan, limits: VideoLimits = VideoLimits(), *, resample: int | None = None
) -> np.ndarray:
    """The sampled frames of a container video, [F, H, W, 3] uint8 RGB, in ``plan.indices`` order.

    Decoding stops after the last sampled frame; only sampled frames are converted to RGB. With
    ``resample`` (a PIL filter) each is resized to the plan's size at once, which keeps memory at
    the resized size; ``preprocess_video`` then leaves them as they are. A decoder error, a
    sampled frame FFmpeg flags as damaged, or a stream shorter than the probe said is a
    ``VideoError``.
    """
    data = _checked_bytes(data)
    demuxer, label = _container_format(data)
    if not plan.indices:
        raise VideoError("the video plan samples no frames")
    if max(plan.indices) >= limits.max_total_frames:
        raise VideoError(f"the video plan samples frame {max(plan.indices)}, beyond the frame limit")
    frames, last, decoded = _Frames(plan, limits, resample), max(plan.indices), 0
    container = _open(data, demuxer, label)
    try:
        stream = _video_stream(container, label)
        _prepare_decoder(stream, limits)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index in frames.rows:
                if frame.is_corrupt:
                    raise VideoError(f"corrupt video: frame {index} is damaged")
                frames.put(index, frame.to_ndarray(format="rgb24"))
            if index >= last:
                break
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"corrupt video: decoding failed after {decoded} frames: {_reason(exc)}") from None
    finally:
        container.close()
    if decoded <= last or frames.out is None:
        raise VideoError(
            f"the video ended after {decoded} frames, but frame {last} was sampled "
            "(the file is truncated or corrupt)"
        )
    return frames.out


def decode_frame_list(
    frames: Sequence[bytes],
    plan: VideoPlan,
    limits: VideoLimits = VideoLimits(),
    *,
    resample: int | None = None,
) -> np.ndarray:
    """The sampled frames of a video given as encoded stills, as ``decode_video`` returns them."""
    if not plan.indices:
        raise VideoError("the video plan samples no frames")
    if max(plan.indices) >= len(frames):
        raise VideoError(f"frame {max(plan.indices)} was sampled but the video has {len(frames)} frames")
    out = _Frames(plan, limits, resample)
    for index in sorted(out.rows):
        try:
            img = decode_image(bytes(frames[index]), max_image_pixels=limits.max_frame_pixels)
        except ImageError as exc:
            raise VideoError(f"frame {index}: {exc}") from None
        out.put(index, np.asarray(img))
    assert out.out is not None
    return out.out
