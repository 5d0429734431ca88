"""Evaluation on the benchmarks users report: MMBench, POPE, MUSIC-AVQA, AVE and MME (see launch/eval.py)."""

from pipeline.eval import ave, mmbench, mme, music_avqa, pope

BENCHMARKS = {"mmbench": mmbench, "pope": pope, "music_avqa": music_avqa, "ave": ave, "mme": mme}
