"""Real media for the synthetic datasets: coloured shapes as mp4 (libx264 + AAC via PyAV), beeps as wav, jpg images.

The media carry the answers (colour, side, number and timing of beeps, timbre, loudness), so a model trained on them
can learn something measurable. Writes go to a temp file first and are renamed, so a crash leaves no half-file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from pipeline.media import SAMPLE_RATE

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
}
TIMBRES = ("sine", "square", "saw", "noise")
SHAPES = ("square", "circle", "triangle", "diamond", "cross")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # the image's quadrants, one shape at most each


@dataclass
class Beep:
    """One tone burst: start time and length in seconds, pitch, timbre and amplitude."""

    start: float
    length: float = 0.1
    freq: float = 660.0
    timbre: str = "sine"
    amp: float = 0.5


@dataclass
class Clip:
    """A clip description: a square of `colour` on `side` visible from `shape_on` to `shape_off` s, plus beeps."""

    duration: float
    colour: str
    side: str = "left"
    shape_on: float = 0.0
    shape_off: float | None = None
    beeps: list[Beep] = field(default_factory=list)
    fps: int = 8


def _tone(beep: Beep, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    phase = 2 * np.pi * beep.freq * t
    if beep.timbre == "sine":
        wave = np.sin(phase)
    elif beep.timbre == "square":
        wave = np.sign(np.sin(phase))
    elif beep.timbre == "saw":
        wave = 2 * ((beep.freq * t) % 1.0) - 1
    elif beep.timbre == "noise":
        wave = np.random.default_rng(int(beep.freq)).uniform(-1, 1, n)
    else:
        raise ValueError(f"unknown timbre {beep.timbre!r} (known: {', '.join(TIMBRES)})")
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * SAMPLE_RATE))
    return (beep.amp * wave * ramp).astype(np.float32)


def waveform(duration: float, beeps: list[Beep]) -> np.ndarray:
    """Mono float32 waveform at 16 kHz: silence with faint noise plus the beeps."""
    total = int(round(duration * SAMPLE_RATE))
    audio = np.random.default_rng(total).normal(0, 0.003, total).astype(np.float32)
    for beep in beeps:
        start = int(beep.start * SAMPLE_RATE)
        n = min(int(beep.length * SAMPLE_RATE), total - start)
        audio[start : start + n] += _tone(beep, n)
    return np.clip(audio, -1, 1)


def frame(colour: str | None, side: str, y: int) -> np.ndarray:
    """One 64x64 RGB frame: grey background and, if `colour` is set, a 20 px square on the left or right half."""
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    if colour is not None:
        x = 6 if side == "left" else SIZE - 26
        img[y : y + 20, x : x + 20] = COLOURS[colour]
    return img


def _outline(kind: str, x: int, y: int, size: int) -> list[tuple[int, int]]:
    """The polygon of a shape in the box (x, y, size); the circle is drawn as an ellipse instead."""
    s, m, t = size, size // 2, size // 3
    points = {
        "square": [(0, 0), (s, 0), (s, s), (0, s)],
        "triangle": [(m, 0), (s, s), (0, s)],
        "diamond": [(m, 0), (s, m), (m, s), (0, m)],
        "cross": [
            (t, 0),
            (s - t, 0),
            (s - t, t),
            (s, t),
            (s, s - t),
            (s - t, s - t),
            (s - t, s),
            (t, s),
            (t, s - t),
            (0, s - t),
            (0, t),
            (t, t),
        ],
    }[kind]
    return [(x + px, y + py) for px, py in points]


def scene(objects: list[tuple[str, str, str]], jitter: tuple[int, int] = (0, 0), size: int = 22) -> np.ndarray:
    """A 64x64 RGB image of up to four (shape, colour, cell) objects on grey, each centred in its quadrant of CELLS
    and moved by `jitter` pixels (x, y)."""
    img = Image.new("RGB", (SIZE, SIZE), (40, 40, 40))
    draw = ImageDraw.Draw(img)
    half = SIZE // 2
    for kind, colour, cell in objects:
        row, col = divmod(CELLS.index(cell), 2)
        x = col * half + (half - size) // 2 + jitter[0]
        y = row * half + (half - size) // 2 + jitter[1]
        if kind == "circle":
            draw.ellipse([x, y, x + size - 1, y + size - 1], fill=COLOURS[colour])
        elif kind in SHAPES:
            draw.polygon(_outline(kind, x, y, size - 1), fill=COLOURS[colour])
        else:
            raise ValueError(f"unknown shape {kind!r} (known: {', '.join(SHAPES)})")
    return np.asarray(img)


def frames(clip: Clip) -> list[np.ndarray]:
    """The clip's frames; the square moves down and back up so that the shapes really move."""
    out = []
    n = int(round(clip.duration * clip.fps))
    off = clip.duration if clip.shape_off is None else clip.shape_off
    for i in range(n):
        t = i / clip.fps
        y = 8 + int(28 * abs(((i / max(n - 1, 1)) * 2) % 2 - 1))
        out.append(frame(clip.colour if clip.shape_on <= t < off else None, clip.side, y))
    return out


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def write_mp4(path: Path, clip: Clip, with_audio: bool = True) -> None:
    """H.264 video (and an AAC mono 16 kHz audio track) in an mp4 container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with av.open(str(tmp), "w", format="mp4") as box:
        vstream = box.add_stream("libx264", rate=clip.fps)
        vstream.width = vstream.height = SIZE
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"preset": "ultrafast"}
        astream = None
        if with_audio:
            astream = box.add_stream("aac", rate=SAMPLE_RATE)
            astream.layout = "mono"
        for img in frames(clip):
            for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(packet)
        for packet in vstream.encode():
            box.mux(packet)
        if astream is not None:
            audio = av.AudioFrame.from_ndarray(waveform(clip.duration, clip.beeps)[None], format="fltp", layout="mono")
            audio.sample_rate = SAMPLE_RATE
            # With a pts the AAC encoder marks its 1024 priming samples (negative pts) and the muxer writes an edit
            # list, so decoders drop them; without, the soundtrack would lag the frames by 64 ms.
            audio.pts, audio.time_base = 0, Fraction(1, SAMPLE_RATE)
            for packet in astream.encode(audio):
                box.mux(packet)
            for packet in astream.encode(None):
                box.mux(packet)
    tmp.replace(path)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    sf.write(tmp, audio, sample_rate, format="WAV", subtype="PCM_16")
    tmp.replace(path)


def write_jpg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    Image.fromarray(img).save(tmp, format="JPEG", quality=92)
    tmp.replace(path)
