"""The demo's result: a markdown table, `results.json` and `results.png`, each score beside its media-blind baselines.

Scores and baselines are fractions in, percentages out. POPE is the mean over its splits, as its headline.
"""

from __future__ import annotations

import json
from pathlib import Path


def pope_means(metrics: dict[str, dict]) -> dict[str, float]:
    """POPE accuracy and F1, each the mean over the splits present."""
    return {key: sum(split[key] for split in metrics.values()) / len(metrics) for key in ("accuracy", "f1")}


def summary(results: dict[str, dict], base: dict[str, dict[str, float]], adapter: str) -> dict:
    """The numbers `results.json` holds: every headline score and every baseline, as fractions."""
    pope = pope_means(results["pope"])
    return {
        "adapter": adapter,
        "music_avqa": results["music_avqa"]["overall"],
        "majority": base["music_avqa"]["majority"],
        "type_prior": base["music_avqa"]["type_prior"],
        "pope_accuracy": pope["accuracy"],
        "pope_f1": pope["f1"],
        "pope_one_answer_accuracy": base["pope"]["one_answer_accuracy"],
        "pope_one_answer_f1": base["pope"]["one_answer_f1"],
        "mmbench": results["mmbench"]["overall"],
        "mmbench_chance": base["mmbench"]["chance"],
        "mmbench_best_letter": base["mmbench"]["best_letter"],
        "mmbench_best_option_text": base["mmbench"]["best_option_text"],
    }


def table(results: dict[str, dict], s: dict) -> str:
    """The markdown results table of a summary (and the MUSIC-AVQA and MMBench breakdowns)."""
    adapter = s["adapter"]
    lines = [
        f"| benchmark | metric | {adapter} (merged) | baselines (media-blind) |",
        "|---|---|---:|---:|",
        f"| MUSIC-AVQA (synthetic) | overall accuracy | {100 * s['music_avqa']:.1f} | "
        f"{100 * s['majority']:.1f} (majority answer) |",
        f"| | | | {100 * s['type_prior']:.1f} (majority per question type) |",
    ]
    lines += [f"| | {name} | {100 * acc:.1f} | |" for name, acc in results["music_avqa"]["subtype"].items()]
    lines += [
        f"| POPE (synthetic) | accuracy / F1 | {100 * s['pope_accuracy']:.1f} / {100 * s['pope_f1']:.1f} | "
        f"{100 * s['pope_one_answer_accuracy']:.1f} / {100 * s['pope_one_answer_f1']:.1f} (one answer) |",
        f"| MMBench (synthetic) | CircularEval overall | {100 * s['mmbench']:.1f} | "
        f"{100 * s['mmbench_chance']:.1f} (chance) |",
        f"| | | | {100 * s['mmbench_best_letter']:.1f} (best single letter) |",
        f"| | | | {100 * s['mmbench_best_option_text']:.1f} (best option text per category) |",
    ]
    lines += [f"| | {name} | {100 * acc:.1f} | |" for name, acc in results["mmbench"]["category"].items()]
    return "\n".join(lines)


def plot(s: dict, out: Path) -> None:
    """Bars: each benchmark's score (blue) beside its baselines (grey), in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "MUSIC-AVQA: accuracy",
            [
                (s["adapter"], s["music_avqa"]),
                ("majority\nanswer", s["majority"]),
                ("majority per\ntype", s["type_prior"]),
            ],
        ),
        (
            "POPE: accuracy and F1",
            [
                (f"{s['adapter']}\naccuracy", s["pope_accuracy"]),
                ("one answer\naccuracy", s["pope_one_answer_accuracy"]),
                (f"{s['adapter']}\nF1", s["pope_f1"]),
                ("one answer\nF1", s["pope_one_answer_f1"]),
            ],
        ),
        (
            "MMBench: CircularEval",
            [
                (s["adapter"], s["mmbench"]),
                ("chance", s["mmbench_chance"]),
                ("best single\nletter", s["mmbench_best_letter"]),
                ("best option\ntext", s["mmbench_best_option_text"]),
            ],
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), dpi=100, gridspec_kw={"width_ratios": [3, 4, 4]})
    for ax, (title, bars) in zip(axes, panels):
        values = [100 * v for _, v in bars]
        colours = ["#1f77b4" if label.startswith(s["adapter"]) else "#9a9a9a" for label, _ in bars]
        ax.bar(range(len(bars)), values, color=colours)
        for x, v in enumerate(values):
            ax.text(x, v + 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%")
    fig.suptitle(f"demo: merged {s['adapter']} checkpoint (blue) against media-blind baselines (grey), held-out tests")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def write(out: Path, results: dict[str, dict], base: dict[str, dict[str, float]], adapter: str) -> str:
    """Write results.md, results.json and results.png under `out`; returns the table."""
    s = summary(results, base, adapter)
    text = table(results, s)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(s, indent=2))
    plot(s, out / "results.png")
    return text
