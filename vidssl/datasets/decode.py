"""Video and audio decoding: one `VideoReader` over three backends, with sparse seek-based frame access.

Backends (`BACKENDS`):

- ``"av"`` (PyAV, FFmpeg): seeks to the keyframe at or before the first wanted frame, decodes forward with
  threaded decoding and converts to RGB only the frames that were asked for. Frame ``i`` is the frame whose
  presentation time rounds to ``i / fps`` from the start of the video stream.
- ``"decord"`` (decord 0.6.0): ``get_batch`` on a ``decord.VideoReader``. decord is unmaintained and has known
  failure modes that this wrapper defends against: it is imported only after torch (decord#251), a reader
  made before a fork is never used by the child (decord#294), and the frame count is clamped to the packets
  actually present in the file so that no index past the real end reaches decord (decord#373, an
  uninterruptible loop holding the GIL).
- ``"frames"``: a directory of JPEG/PNG frames sorted by file name (DAVIS, many DPC setups); folders carry
  no frame rate, so it is an argument.

Audio always goes through PyAV (torchaudio's own loaders are deprecated), whatever the video backend.

Default backend: ``"av"``, by measurement and by robustness (the figures: docs/benchmarks.md, "Data
pipeline"): no loader figure favours decord, and PyAV is maintained, never loops on an over-counted length,
reports the decoder's own error messages and decodes the audio. Both return bit-identical frames on the
sample clips.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import av
import numpy as np
import torch  # imported before decord, always: decord imported first can hang torch (decord#251)
from PIL import Image

BACKENDS: tuple[str, ...] = ("av", "decord", "frames")
DEFAULT_BACKEND: str = "av"  # chosen by measurement and robustness: see the module docstring
FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

# A stream that ends up to this many frames before its header's frame count is treated as an over-count
# by the container (common: edit lists, a last frame without a packet): the missing tail frames repeat the
# last decoded frame. A longer shortfall means a truncated or broken file and raises VideoDecodeError.
END_TOLERANCE = 2

# Re-seeking restarts the (frame-threaded) decoder pipeline, so jumping to a later keyframe only pays off
# when it skips more than a few frames of forward decoding.
SEEK_MIN_GAIN = 8

# Decoders inherited across fork(). Their worker threads do not exist in the child, so closing or even
# freeing them there blocks forever (measured: `container.close()` in a forked child hangs). The child
# keeps them referenced here, untouched, and opens its own decoder instead.
_INHERITED: list[Any] = []


class VideoDecodeError(Exception):
    """A file that cannot be read as video/audio; the message names the path and the decoder's own message."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = message


@dataclass(frozen=True)
class VideoMeta:
    """What a dataset needs to know about a video before decoding it.

    `num_frames` is the number of decodable frames the backend reports; `duration` is in seconds;
    `audio_rate` is the audio stream's sample rate in Hz, or None without audio.
    """

    num_frames: int
    fps: float
    duration: float
    height: int
    width: int
    has_audio: bool
    audio_rate: int | None
    backend: str


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")


def _resolve_backend(path: Path, backend: str | None) -> str:
    """None picks "frames" for a directory and DEFAULT_BACKEND for a file."""
    if backend is None:
        return "frames" if path.is_dir() else DEFAULT_BACKEND
    _check_backend(backend)
    return backend


def _open_av(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_dir():
        raise VideoDecodeError(path, 'is a directory; read frame folders with backend="frames"')
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"cannot open: {e}") from e


def _av_meta(path: Path, container: av.container.InputContainer, backend: str = "av") -> VideoMeta:
    """Metadata from the container header alone (nothing is decoded)."""
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoDecodeError(path, "unknown frame rate")
    fps = Fraction(rate)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    # The header's frame count when the container stores one (mp4, mov); else estimated from the duration.
    num_frames = stream.frames if stream.frames > 0 else round(duration * fps)
    if num_frames <= 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    if duration <= 0:
        duration = float(num_frames / fps)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, "the video stream has no frame size")
    audio = container.streams.audio[0] if container.streams.audio else None
    return VideoMeta(
        num_frames=int(num_frames),
        fps=float(fps),
        duration=duration,
        height=int(height),
        width=int(width),
        has_audio=audio is not None,
        audio_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
        backend=backend,
    )


def _list_frames(path: Path) -> list[Path]:
    if not path.is_dir():
        raise VideoDecodeError(path, "not a directory of frames")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
    if not files:
        raise VideoDecodeError(path, f"no frame images ({', '.join(FRAME_SUFFIXES)}) in the directory")
    return files


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot read frame image: {e}") from e


def _frames_meta(path: Path, files: list[Path], fps: float) -> VideoMeta:
    try:
        with Image.open(files[0]) as im:  # reads the header only
            width, height = im.size
    except OSError as e:
        raise VideoDecodeError(files[0], f"cannot read frame image: {e}") from e
    return VideoMeta(
        num_frames=len(files),
        fps=float(fps),
        duration=len(files) / fps,
        height=height,
        width=width,
        has_audio=False,
        audio_rate=None,
        backend="frames",
    )


def probe(path: str | os.PathLike, backend: str | None = "av", *, fps: float = 25.0) -> VideoMeta:
    """Read a video's metadata without decoding frames (header only for "av"; decord builds its index).

    `backend=None` picks "frames" for a directory and `DEFAULT_BACKEND` for a file; `fps` is used only for
    frame folders. Raises VideoDecodeError naming the path when the file cannot be read.
    """
    path = Path(path)
    backend = _resolve_backend(path, backend)
    if backend == "frames":
        return _frames_meta(path, _list_frames(path), fps)
    if backend == "decord":
        with VideoReader(path, backend="decord") as reader:
            return reader.meta
    container = _open_av(path)
    try:
        return _av_meta(path, container)
    finally:
        container.close()


class VideoReader:
    """Random access to the frames and audio of one video file or frame folder.

    Usage::

        reader = VideoReader(path)            # backend=None: DEFAULT_BACKEND for files, "frames" for folders
        reader.num_frames, reader.fps, reader.duration, reader.size, reader.has_audio, reader.audio_rate
        reader.get_frames([0, 5, 9])          # uint8 T×H×W×3
        reader.get_audio(0.2, 1.0, 16000)     # float 1×16000 in [-1, 1]

    The decoder stays open between calls. After a fork (DataLoader workers) the child opens its own
    decoder on first use; the parent's is never touched in the child. Pickling drops the open decoder.
    Construction reads the metadata and raises VideoDecodeError (naming the path) for unreadable files.

    Args:
        path: a video file, or a directory of JPEG/PNG frames for backend "frames".
        backend: one of BACKENDS, or None for "frames" on directories and DEFAULT_BACKEND on files.
        fps: frame rate of a frame folder (folders carry none); ignored for video files.
        num_threads: decoder threads; 0 lets FFmpeg/decord choose (one per core).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str | None = None,
        *,
        fps: float = 25.0,
        num_threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.backend = _resolve_backend(self.path, backend)
        self.num_threads = num_threads
        self._pid = os.getpid()
        self._container: Any = None  # PyAV container of the video ("av")
        self._audio_container: Any = None  # PyAV container used for audio (every backend)
        self._decord: Any = None  # decord.VideoReader ("decord")
        self._keyframes: list[int] | None = None  # frame indices of keyframes ("av"), when the index has them
        self._files: list[Path] = []  # frame images ("frames")
        if self.backend == "frames":
            self._files = _list_frames(self.path)
            self.meta = _frames_meta(self.path, self._files, fps)
        elif self.backend == "av":
            self._container = _open_av(self.path)
            self.meta = _av_meta(self.path, self._container)
            self._init_av_timing(self._container.streams.video[0])
        else:
            self.meta = self._open_decord()

    # ----------------------------------------------------------------------------------------- metadata
    @property
    def num_frames(self) -> int:
        return self.meta.num_frames

    @property
    def fps(self) -> float:
        return self.meta.fps

    @property
    def duration(self) -> float:
        return self.meta.duration

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the decoded frames."""
        return (self.meta.height, self.meta.width)

    @property
    def has_audio(self) -> bool:
        return self.meta.has_audio

    @property
    def audio_rate(self) -> int | None:
        return self.meta.audio_rate

    @property
    def keyframes(self) -> list[int] | None:
        """Frame indices where decoding can start (every frame of a folder); None when the file has no index.

        A sparse read of frames i..j decodes from the last keyframe at or before i through j.
        """
        if self.backend == "frames":
            return list(range(self.num_frames))
        if self.backend == "decord":
            self._check_fork()
            return [i for i in self._decord_reader().get_key_indices() if i < self.num_frames]
        return None if self._keyframes is None else list(self._keyframes)

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, backend={self.backend!r}, {self.meta})"

    # ---------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the decoders (the reader reopens them if used again)."""
        self._check_fork()
        for name in ("_container", "_audio_container"):
            container = getattr(self, name)
            if container is not None:
                container.close()
                setattr(self, name, None)
        self._decord = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_container=None, _audio_container=None, _decord=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self) -> None:
        # Close explicitly rather than leave it to the garbage collector: a PyAV container and its streams
        # reference each other, so an open one waits for the cyclic collector, which may first run in a
        # forked child and block there freeing decoder threads that only the parent has. In a child,
        # close() sets the parent's decoders aside instead (see _INHERITED).
        if "_pid" in self.__dict__:  # construction got far enough to hold decoders
            self.close()

    def _check_fork(self) -> None:
        """In a forked child, set the parent's decoders aside (see `_INHERITED`) so that they get reopened."""
        if self._pid == os.getpid():
            return
        for name in ("_container", "_audio_container", "_decord"):
            if getattr(self, name) is not None:
                _INHERITED.append(getattr(self, name))
                setattr(self, name, None)
        self._pid = os.getpid()

    # ---------------------------------------------------------------------------------------- frames
    def get_frames(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Decode the frames at `indices` (any order, repeats allowed).

        Inputs: indices, T frame indices in [0, num_frames).
        Outputs: uint8 tensor T×H×W×3 (RGB), frames in the requested order.
        Raises IndexError for an index outside [0, num_frames) and VideoDecodeError when decoding fails.
        """
        wanted = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        if not wanted:
            return torch.empty((0, *self.size, 3), dtype=torch.uint8)
        unique = sorted(set(wanted))
        self._check_fork()
        if self.backend == "frames":
            decoded = {i: _read_image(self._files[i]) for i in unique}
        elif self.backend == "av":
            decoded = self._decode_av(unique)
        else:
            decoded = self._decode_decord(unique)
        shapes = {a.shape for a in decoded.values()}
        if len(shapes) != 1:
            raise VideoDecodeError(self.path, f"frames of different sizes {sorted(shapes)}")
        return torch.from_numpy(np.stack([decoded[i] for i in wanted]))

    # PyAV ------------------------------------------------------------------------------------------
    def _init_av_timing(self, stream: av.video.stream.VideoStream) -> None:
        self._time_base = stream.time_base
        self._start_pts = stream.start_time if stream.start_time is not None else 0
        self._fps_exact = Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate)
        self._keyframes = self._keyframe_indices(stream)

    def _keyframe_indices(self, stream: av.video.stream.VideoStream) -> list[int] | None:
        """Frame indices of the keyframes listed in the demuxer's index (mp4/mov list every sample).

        Index timestamps are decode times; the first keyframe is shown at the stream start, so its offset
        converts the others to presentation times. Only used to decide when re-seeking saves work.
        """
        entries = stream.index_entries
        if len(entries) == 0 or not entries[0].is_keyframe:
            return None
        shift = self._start_pts - entries[0].timestamp
        return [self._pts_to_index(e.timestamp + shift) for e in entries if e.is_keyframe]

    def _pts_to_index(self, pts: int) -> int:
        return round((pts - self._start_pts) * self._time_base * self._fps_exact)

    def _av_video(self) -> tuple[Any, Any]:
        if self._container is None:
            self._container = _open_av(self.path)
        stream = self._container.streams.video[0]
        if not stream.codec_context.is_open:  # threading can only be set before the first decode
            stream.thread_type = "AUTO"  # frame + slice threads
            stream.codec_context.thread_count = self.num_threads
        return self._container, stream

    def _frames_from(self, target: int) -> Iterator[tuple[int, Any]]:
        """Seek to the keyframe at or before frame `target` and yield (index, av.VideoFrame) forward."""
        container, stream = self._av_video()
        pts = self._start_pts + round(Fraction(target) / (self._fps_exact * self._time_base))
        container.seek(pts, stream=stream, backward=True, any_frame=False)
        previous: int | None = None
        for frame in container.decode(stream):
            if frame.pts is not None:
                index = self._pts_to_index(frame.pts)
            else:  # no timestamp: count on from the previous frame
                index = 0 if previous is None else previous + 1
            if previous is None and index > target > 0:
                # The demuxer's seek overshot (an inexact index): start again from the very beginning.
                yield from self._frames_from(0)
                return
            previous = index
            yield index, frame
        if previous is None and target > 0:  # the seek landed past the last packet
            yield from self._frames_from(0)

    def _keyframe_before(self, target: int) -> int | None:
        """The last keyframe at or before frame `target`, when the demuxer's index lists keyframes."""
        if self._keyframes is None:
            return None
        return self._keyframes[max(bisect.bisect_right(self._keyframes, target) - 1, 0)]

    def _decode_av(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode sorted unique frame indices, seeking only where it saves decoding."""
        out: dict[int, np.ndarray] = {}
        p = 0  # next wanted frame
        # Keyframes already sought in this call: each is sought at most once, so a seek that does not land
        # where the index promised (a truncated file, say) cannot start an endless seek-decode loop.
        sought: set[int | None] = set()
        try:
            while p < len(wanted):
                sought.add(self._keyframe_before(wanted[p]))
                previous = None  # the last decoded frame: with variable frame rate it may cover skipped indices
                last_index = -1
                for index, frame in self._frames_from(wanted[p]):
                    # Wanted indices before this frame show the previous frame (gaps in the timestamps),
                    # or this one if nothing was decoded before it (the first frame starts late).
                    while p < len(wanted) and wanted[p] < index:
                        out[wanted[p]] = (frame if previous is None else previous).to_ndarray(format="rgb24")
                        p += 1
                    while p < len(wanted) and wanted[p] == index:
                        out[wanted[p]] = frame.to_ndarray(format="rgb24")
                        p += 1
                    previous, last_index = frame, index
                    if p == len(wanted):
                        break
                    # Jump ahead when a keyframe lies far enough between here and the next wanted frame.
                    keyframe = self._keyframe_before(wanted[p])
                    if keyframe is not None and keyframe > index + SEEK_MIN_GAIN and keyframe not in sought:
                        break
                else:  # the stream ended before the remaining wanted frames
                    missing = wanted[p:]
                    real = last_index + 1
                    if previous is None or self.num_frames - real > END_TOLERANCE:
                        raise VideoDecodeError(
                            self.path,
                            f"the video stream ends after {real} frames but its header says "
                            f"{self.num_frames} (truncated or corrupt file); frames {missing[:5]} are missing",
                        )
                    tail = previous.to_ndarray(format="rgb24")
                    out.update({i: tail for i in missing})
                    p = len(wanted)
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding failed: {e}") from e
        return out

    # decord ----------------------------------------------------------------------------------------
    def _open_decord(self) -> VideoMeta:
        import decord  # only after torch (imported at the top of this module): decord#251

        container = _open_av(self.path)  # header metadata (size, audio) from the same demuxer as "av"
        try:
            header = _av_meta(self.path, container, backend="decord")
        finally:
            container.close()
        try:
            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads)
            # decord builds a timestamp per packet while opening; its len() is the header's count, which
            # can over-count, and indices past the real end make it loop forever (decord#373). The packet
            # table is only exposed after a timestamp lookup.
            reader.get_frame_timestamp([0])
            packets = len(reader._frame_pts)
        except decord.DECORDError as e:
            raise VideoDecodeError(self.path, f"decord cannot open: {e}") from e
        num_frames = min(len(reader), packets)
        if num_frames <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frames")
        self._decord = reader
        fps = float(reader.get_avg_fps())
        return VideoMeta(
            num_frames=num_frames,
            fps=fps,
            duration=num_frames / fps,
            height=header.height,
            width=header.width,
            has_audio=header.has_audio,
            audio_rate=header.audio_rate,
            backend="decord",
        )

    def _decord_reader(self) -> Any:
        import decord

        if self._decord is None:
            try:
                self._decord = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.num_threads)
            except decord.DECORDError as e:
                raise VideoDecodeError(self.path, f"decord cannot open: {e}") from e
        return self._decord

    def _decode_decord(self, wanted: list[int]) -> dict[int, np.ndarray]:
        import decord

        reader = self._decord_reader()
        try:
            batch = reader.get_batch(wanted).asnumpy()
        except decord.DECORDError as e:
            raise VideoDecodeError(self.path, f"decord decoding failed: {e}") from e
        return dict(zip(wanted, batch))

    # ---------------------------------------------------------------------------------------- audio
    def get_audio(
        self, start_sec: float, duration_sec: float, sample_rate: int, mono: bool = True
    ) -> torch.Tensor:
        """The audio from `start_sec` (seconds from the first video frame) for `duration_sec` seconds.

        Resampled to `sample_rate` and mixed down to mono (or to stereo with mono=False). Past the end of the
        audio stream the result is zero-padded; it always has exactly round(duration_sec * sample_rate)
        samples.
        Outputs: float32 tensor C×S in [-1, 1], C = 1 (mono) or 2 (stereo).
        Raises VideoDecodeError without an audio stream or when decoding fails.
        """
        if not self.has_audio:
            raise VideoDecodeError(self.path, "no audio stream")
        if start_sec < 0 or duration_sec <= 0 or sample_rate <= 0:
            raise ValueError(
                f"{self.path}: need start_sec >= 0, duration_sec > 0, sample_rate > 0; got "
                f"{start_sec}, {duration_sec}, {sample_rate}"
            )
        self._check_fork()
        if self._audio_container is None:
            self._audio_container = _open_av(self.path)
        container = self._audio_container
        stream = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        # Audio and video share the container clock; time 0 is the first video frame.
        origin = float(video.start_time * video.time_base) if video is not None and video.start_time else 0.0
        start = origin + start_sec
        n_out = round(duration_sec * sample_rate)
        channels = 1 if mono else 2
        resampler = av.AudioResampler(format="fltp", layout="mono" if mono else "stereo", rate=sample_rate)
        chunks: list[np.ndarray] = []
        have = 0
        skip: int | None = None  # output samples before `start`; negative when the audio begins after it
        try:
            container.seek(round(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if skip is None:
                    frame_start = float(frame.time) if frame.time is not None else start
                    skip = round((start - frame_start) * sample_rate)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    have += out.samples
                if have >= skip + n_out:
                    break
            else:  # end of stream: drain what the resampler still buffers
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
                    have += out.samples
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"audio decoding failed: {e}") from e
        samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
        skip = skip or 0
        if skip < 0:  # the audio stream starts after `start`: silence before it
            samples = np.concatenate([np.zeros((channels, -skip), np.float32), samples], axis=1)
            skip = 0
        samples = samples[:, skip : skip + n_out]
        if samples.shape[1] < n_out:  # past the end of the stream
            samples = np.pad(samples, ((0, 0), (0, n_out - samples.shape[1])))
        return torch.from_numpy(np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False))
