"""Rasterising the word list: words per second on one core.

Target: >= 2,000 words/s on one core. Renders the 10,000 most common English words
(wordfreq) black on white with the default font, at the toy models' size (64 px) and at
ViT-B-32's and RN50x4's input sizes (224 and 288 px), in this one thread; also reports the
rate including the model's preprocessing into a tensor (what the words job feeds the model).
Prints one JSON object with wall-clock and process-CPU rates.

    python benchmarks/word_rendering.py [--words 10000] [--size 64 --size 224 --size 288]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks._common import machine  # noqa: E402
from precompute.words import common_words, render_word  # noqa: E402


def _rate(words: list[str], run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for word in words:
        run(word)
    return len(words) / (time.perf_counter() - wall), len(words) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=10_000)
    parser.add_argument("--size", type=int, action="append")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly
    words = common_words(args.words)
    import open_clip

    results = []
    for size in args.size or [64, 224, 288]:
        render_word(words[0], size)  # warm the font cache
        wall, cpu = _rate(words, lambda w: np.asarray(render_word(w, size)))
        arch = {64: "toy-rn", 224: "ViT-B-32", 288: "RN50x4"}.get(size)
        row = {"size": size, "words": len(words), "words_per_s": round(wall, 1), "words_per_cpu_s": round(cpu, 1),
               "target": 2000}
        if arch:  # open_clip's eval transform at that size (the models' own, without building them)
            preprocess = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(size=size), is_train=False)
            wall_p, cpu_p = _rate(words[:2000], lambda w: preprocess(render_word(w, size)))
            row.update(preprocess_arch=arch, with_preprocess_words_per_s=round(wall_p, 1),
                       with_preprocess_words_per_cpu_s=round(cpu_p, 1))
        results.append(row)
    print(json.dumps({"benchmark": "word_rendering", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
