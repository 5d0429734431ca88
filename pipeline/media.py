"""Decoding media from bytes: the one place that knows the decoders and the 16 kHz audio rate.

Both the runtime (shard samples, benchmark items) and the offline converters read media through these functions, so
a clip decodes the same way when it is sharded, trained on and evaluated. Decoders raise their own exception types;
callers turn them into their own one-line reasons (a skipped sample, a benchmark input error).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SAMPLE_RATE = 16000  # Hz: every audio path (Whisper's feature extractor, the shards, the synthetic media)


class MissingAudio(ValueError):
    """A video that has no (or an empty) audio track."""


def uniform_indices(n: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over n frames, first and last included."""
    return np.linspace(0, n - 1, num_frames).round().astype(int)


def decode_video(data: bytes, num_frames: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames sampled uniformly over the clip, read from mp4 bytes by decord."""
    import decord  # x86_64-only wheel: imported where videos are read, not at package import

    reader = decord.VideoReader(io.BytesIO(data))
    if len(reader) == 0:
        raise ValueError("video has no frames")
    return reader.get_batch(list(uniform_indices(len(reader), num_frames))).asnumpy()


def check_video(data: bytes) -> None:
    """Open the video with decord and make sure it has frames (raises otherwise)."""
    import decord

    if len(decord.VideoReader(io.BytesIO(data))) == 0:
        raise ValueError("video has no frames")


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
        return img.convert("RGB")


def decode_strip(data: bytes, count: object, num_frames: int) -> np.ndarray:
    """Predecoded frames (a jpg of `count` frames stacked vertically), resampled uniformly to `num_frames`."""
    if not isinstance(count, (int, float, str)):
        raise ValueError(f"frame count must be an integer, got {count!r}")
    frames_in = int(count)
    strip = np.asarray(decode_image(data))
    if frames_in < 1 or strip.shape[0] % frames_in:
        raise ValueError(f"a strip of height {strip.shape[0]} cannot hold {frames_in} frames")
    frames = strip.reshape(frames_in, strip.shape[0] // frames_in, *strip.shape[1:])
    return frames[uniform_indices(frames_in, num_frames)]


def decode_audio(data: bytes) -> np.ndarray:
    """Float32 mono waveform at SAMPLE_RATE (librosa resamples when the file's rate differs)."""
    import librosa

    wave, _ = librosa.load(io.BytesIO(data), sr=SAMPLE_RATE, mono=True)
    if wave.size == 0:
        raise ValueError("audio has no samples")
    return wave.astype(np.float32, copy=False)


def soundtrack_wav(data: bytes) -> bytes:
    """A video's audio track (mono, native rate) as 16-bit wav bytes, read with PyAV; `MissingAudio` without one."""
    import av
    import soundfile as sf

    with av.open(io.BytesIO(data), mode="r") as box:
        if not box.streams.audio:
            raise MissingAudio("no audio file and no audio track in the video")
        stream = box.streams.audio[0]
        rate = stream.rate
        mono = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        chunks = [r.to_ndarray()[0] for f in box.decode(stream) for r in mono.resample(f)]
        chunks += [r.to_ndarray()[0] for r in mono.resample(None)]
    if not chunks:
        raise MissingAudio("empty audio track")
    out = io.BytesIO()
    sf.write(out, np.clip(np.concatenate(chunks), -1, 1), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def warm_up() -> None:
    """Pay librosa's one-off start-up (lazy scipy imports, numba cache loading: seconds) in the calling process.

    DataLoader workers are forked anew every epoch; warmed up in the parent, they inherit it instead of each paying.
    """
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, np.float32), 8000, format="WAV")
    decode_audio(buf.getvalue())
