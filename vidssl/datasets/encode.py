"""Writing H.264 MP4 files through PyAV: the one writer behind the synthetic corpus and the overlays."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np


class Mp4Writer:
    """Write frames one at a time to an H.264 MP4 (memory does not grow with the video), and AAC audio.

    Usage: ``with Mp4Writer(path, fps=25) as w: w.write(frame)``; the size is taken from the first frame and
    odd sizes are padded to even, as yuv420p requires. A fractional ``fps`` is kept as a fraction (a
    decoder's 29.97002… becomes 30000/1001). ``options`` go to libx264 (e.g. ``{"crf": "18"}``); with
    ``audio_rate`` the file also gets a mono AAC stream, filled by `write_audio` after the last frame.
    """

    def __init__(self, path: str | Path, fps: float = 8, *, options: dict[str, str] | None = None,
                 audio_rate: int | None = None) -> None:
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.options = dict(options or {})
        self.audio_rate = audio_rate
        self._container: Any = None
        self._stream: Any = None
        self._sound: Any = None
        self._frames = 0
        self._flushed = False

    def __enter__(self) -> Mp4Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 H×W×3 RGB frame."""
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.rate, options=self.options)
            self._stream.height, self._stream.width = frame.shape[0] + frame.shape[0] % 2, frame.shape[1] + frame.shape[1] % 2
            self._stream.pix_fmt = "yuv420p"
            if self.audio_rate is not None:
                self._sound = self._container.add_stream("aac", rate=self.audio_rate, layout="mono")
        image = frame
        if frame.shape[:2] != (self._stream.height, self._stream.width):
            image = np.zeros((self._stream.height, self._stream.width, 3), np.uint8)
            image[: frame.shape[0], : frame.shape[1]] = frame
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        video_frame.pts = self._frames
        self._frames += 1
        self._container.mux(self._stream.encode(video_frame))

    def _flush_video(self) -> None:
        if self._stream is not None and not self._flushed:
            self._container.mux(self._stream.encode())
            self._flushed = True

    def write_audio(self, samples: np.ndarray) -> None:
        """The whole soundtrack, (S,) float in [-1, 1] at ``audio_rate``, after the last frame."""
        if self._sound is None:
            raise ValueError(f"{self.path}: audio needs Mp4Writer(audio_rate=...) and a frame first")
        self._flush_video()
        chunk = 1024  # AAC's frame size
        samples = np.asarray(samples, dtype=np.float32)[None, :]
        for start in range(0, samples.shape[1], chunk):
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                               format="fltp", layout="mono")
            piece.sample_rate = self.audio_rate
            piece.pts = start
            self._container.mux(self._sound.encode(piece))
        self._container.mux(self._sound.encode())

    def __exit__(self, *exc: object) -> None:
        try:
            self._flush_video()
        finally:
            self._container.close()
