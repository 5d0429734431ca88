"""A small dataset in each real raw format (MUSIC-AVQA, AVE, LLaVA json, AudioCaps csv) with real media files.

`python -m data_prep.synthetic --out DIR [--n N] [--seed S]` writes DIR/{music_avqa,ave,llava,audiocaps,image_qa},
each with a train split of about N items and a held-out test split (other clips) of N//4 (at least 4). Every answer is
determined by the media and the answers are balanced, so the question text alone cannot answer (see the tiny-model
notes): the colour of the square, its side, how many beeps, whether the beeps come before or after the square appears,
which is louder (beeps or hum), the event's timbre and time range, high vs low pitch, which colours are where in a
scene of shapes (stage-1 captions); and in image_qa (LLaVA json + jpg, POPE- and MMBench-style questions,
`data_prep.scenes`) which colours are present, where, how many shapes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep import render, scenes
from data_prep.balance import balanced
from data_prep.render import Beep, Clip

NUMBERS = ("zero", "one", "two", "three", "four")
SIDES = ("left", "right")
ORDERS = ("before", "after")
# AVE classes rendered with a distinct timbre and square colour each.
AVE_EVENTS = {
    "Church bell": ("sine", 880.0, "yellow"),
    "Violin, fiddle": ("saw", 440.0, "red"),
    "Acoustic guitar": ("square", 330.0, "blue"),
    "Motorcycle": ("noise", 200.0, "green"),
}
PITCHES = {"high": 1200.0, "low": 300.0}
HUM_FREQ, BEEP_AMP = 110.0, 0.25  # MUSIC-AVQA clips: a square-wave hum at 0.45 (louder) or 0.08 under 0.25 beeps


def _beeps(count: int, first: float, timbre: str = "sine", freq: float = 660.0, amp: float = 0.5) -> list[Beep]:
    return [Beep(start=first + 0.2 * k, length=0.1, freq=freq, timbre=timbre, amp=amp) for k in range(count)]


def _split_sizes(n: int) -> dict[str, int]:
    return {"train": n, "test": max(4, n // 4)}


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def music_avqa(out: Path, n: int, rng: np.random.Generator) -> None:
    """2 s clips: the square appears at 1 s; 1-4 beeps all before or all after it, over a low hum that is louder or
    quieter than the beeps; four questions per clip (count, colour, before/after, louder)."""
    qid = 0
    for split, size in _split_sizes(n).items():
        colours = balanced(tuple(render.COLOURS), size, rng)
        sides, orders = balanced(SIDES, size, rng), balanced(ORDERS, size, rng)
        counts, asked = balanced((1, 2, 3, 4), size, rng), balanced(ORDERS, size, rng)
        hum_loud, hum_first = balanced((True, False), size, rng), balanced((True, False), size, rng)
        entries = []
        for i in range(size):
            vid = f"{split[:2]}{i:05d}"
            first = 0.1 if orders[i] == "before" else 1.1
            hum = Beep(start=0.0, length=2.0, freq=HUM_FREQ, timbre="square", amp=0.45 if hum_loud[i] else 0.08)
            clip = Clip(
                duration=2.0,
                colour=colours[i],
                side=sides[i],
                shape_on=1.0,
                beeps=[hum, *_beeps(counts[i], first, amp=BEEP_AMP)],
            )
            pair = ["hum", "beeps"] if hum_first[i] else ["beeps", "hum"]
            render.write_mp4(out / "videos" / f"{vid}.mp4", clip)
            if i % 3:  # every third clip has no wav: the converter must fall back to the mp4's audio track
                render.write_wav(out / "audio" / f"{vid}.wav", render.waveform(clip.duration, clip.beeps))
            questions = [
                ('["Audio", "Counting"]', "How many beeps are heard in the video?", [], NUMBERS[counts[i]]),
                ('["Visual", "Location"]', "What colour is the shape on the <LR>?", [sides[i]], colours[i]),
                (
                    '["Audio-Visual", "Temporal"]',
                    "Do the beeps sound <BA> the shape appears?",
                    [asked[i]],
                    "yes" if asked[i] == orders[i] else "no",
                ),
                (
                    '["Audio", "Comparative"]',
                    "Is the <Object> louder than the <Object>?",
                    pair,
                    "yes" if hum_loud[i] == hum_first[i] else "no",
                ),
            ]
            for qtype, content, values, answer in questions:
                qid += 1
                entries.append(
                    {
                        "video_id": vid,
                        "question_id": qid,
                        "type": qtype,
                        "question_content": content,
                        "templ_values": json.dumps(values),
                        "question_deleted": 0,
                        "anser": answer,
                    }
                )
        _write_json(out / f"avqa-{split}.json", entries)


def ave(out: Path, n: int, rng: np.random.Generator) -> None:
    """10 s clips (2 fps): the event's sound and its coloured square last from StartTime to EndTime."""
    header = "Category&VideoID&Quality&StartTime&EndTime"
    all_lines = []
    for split, size in _split_sizes(n).items():
        events = balanced(tuple(AVE_EVENTS), size, rng)
        lines = []
        for i in range(size):
            vid = f"ave{split[:2]}{i:04d}"
            start = int(rng.integers(0, 7))
            end = int(rng.integers(start + 2, 11))
            timbre, freq, colour = AVE_EVENTS[events[i]]
            clip = Clip(
                duration=10.0,
                colour=colour,
                side=SIDES[i % 2],
                shape_on=start,
                shape_off=end,
                fps=2,
                beeps=[Beep(start=start, length=end - start, freq=freq, timbre=timbre, amp=0.4)],
            )
            render.write_mp4(out / "AVE" / f"{vid}.mp4", clip)
            lines.append(f"{events[i]}&{vid}&good&{start}&{end}")
        (out / {"train": "trainSet.txt", "test": "testSet.txt"}[split]).write_text("\n".join([header, *lines]) + "\n")
        all_lines += lines
    (out / "valSet.txt").write_text(header + "\n")
    (out / "Annotations.txt").write_text("\n".join([header, *all_lines]) + "\n")


def llava(out: Path, n: int, rng: np.random.Generator) -> None:
    """Stage-1 style captions and questions: images of one to four coloured shapes described in words
    (`data_prep.scenes`), silent videos, and beeping audio."""
    for split, size in _split_sizes(n).items():
        per_kind = -(-size // 3)  # items i, i+3, ... share a kind; each kind gets its own balanced answers
        colours, sides = balanced(tuple(render.COLOURS), per_kind, rng), balanced(SIDES, per_kind, rng)
        counts, shapes = balanced((1, 2, 3, 4), per_kind, rng), balanced((1, 2, 3, 4), per_kind, rng)
        entries = []
        for i in range(size):
            eid, kind = f"{split}-{i:05d}", ("image", "video", "audio")[i % 3]
            if kind == "image":
                scene = scenes.random_scene(shapes[i // 3], rng)
                render.write_jpg(out / "images" / f"{eid}.jpg", scene.image())
                turns = ["<image>\nDescribe the image.", scene.describe()]
            elif kind == "video":
                colour, side = colours[i // 3], sides[i // 3]
                render.write_mp4(
                    out / "videos" / f"{eid}.mp4", Clip(duration=1.0, colour=colour, side=side), with_audio=False
                )
                turns = ["<video>\nDescribe the video briefly.", f"A {colour} square moving on the {side}."]
            else:
                render.write_wav(out / "audio" / f"{eid}.wav", render.waveform(1.0, _beeps(counts[i // 3], 0.1)))
                turns = ["<audio>\nHow many beeps are there?", NUMBERS[counts[i // 3]]]
            ext = {"image": "jpg", "video": "mp4", "audio": "wav"}[kind]
            entries.append(
                {
                    "id": eid,
                    kind: f"{kind}s/{eid}.{ext}" if kind != "audio" else f"audio/{eid}.wav",
                    "conversations": [{"from": "human", "value": turns[0]}, {"from": "gpt", "value": turns[1]}],
                }
            )
        _write_json(out / f"{split}.json", entries)


def audiocaps(out: Path, n: int, rng: np.random.Generator) -> None:
    """1.5 s clips of 1-4 beeps, high or low: the caption says how many and which pitch."""
    for split, size in _split_sizes(n).items():
        counts, pitches = balanced((1, 2, 3, 4), size, rng), balanced(tuple(PITCHES), size, rng)
        rows = []
        for i in range(size):
            cap_id = str(100000 + (0 if split == "train" else 50000) + i)
            wave = render.waveform(1.5, _beeps(counts[i], 0.1, freq=PITCHES[pitches[i]]))
            render.write_wav(out / "audio" / f"{cap_id}.wav", wave)
            word = NUMBERS[counts[i]].capitalize()
            rows.append(
                [cap_id, f"yt{cap_id}", "30", f"{word} {pitches[i]}-pitched beep{'s' if counts[i] > 1 else ''}."]
            )
        with (out / f"{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["audiocap_id", "youtube_id", "start_time", "caption"], *rows])


def image_qa(out: Path, n: int, rng: np.random.Generator) -> None:
    """Image instruction data (LLaVA json + jpg, one image per question): 2n yes/no questions in POPE's prompt and
    2n multiple-choice ones in MMBench's prompt (answer: the option's text), about scenes of coloured shapes."""
    for split, size in _split_sizes(n).items():
        pairs = scenes.draw(("exists",), 2 * size, rng) + scenes.draw(scenes.CHOICE_KINDS, 2 * size, rng)
        entries = []
        for i, (scene, question) in enumerate(pairs):
            eid = f"{split}-{question.kind}-{i:05d}"
            render.write_jpg(out / "images" / f"{eid}.jpg", scene.image())
            turns = [f"<image>\n{question.prompt()}", question.target()]
            entries.append(
                {
                    "id": eid,
                    "image": f"images/{eid}.jpg",
                    "conversations": [{"from": "human", "value": turns[0]}, {"from": "gpt", "value": turns[1]}],
                }
            )
        _write_json(out / f"{split}.json", entries)


# raw directory: its writer; image_qa is in the LLaVA format (converter `llava`), the others in their own
WRITERS = {"music_avqa": music_avqa, "ave": ave, "llava": llava, "audiocaps": audiocaps, "image_qa": image_qa}


def generate(out: Path, n: int = 32, seed: int = 0, progress: bool = False) -> dict[str, Path]:
    """Write every source under `out` (a progress bar over them with `progress`); returns {source: root}.
    Deterministic for a given (n, seed)."""
    if n < 4:
        raise ValueError(f"--n must be at least 4, got {n}")
    roots = {}
    bar = tqdm(WRITERS.items(), desc="synthetic raw data", unit="source", disable=not progress)
    for i, (name, write) in enumerate(bar):
        bar.set_postfix_str(name)
        root = out / name
        root.mkdir(parents=True, exist_ok=True)
        write(root, n, np.random.default_rng([seed, i]))
        roots[name] = root
    return roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=32, help="train items per source (test: n//4, at least 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        written = generate(args.out, args.n, args.seed)
    except (ValueError, OSError) as exc:  # --n too small; a read-only or full --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, root in written.items():
        print(f"{name}: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
