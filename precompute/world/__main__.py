"""``python -m precompute.world``: look at the world and time it.

    python -m precompute.world sheet /tmp/world_contact_sheet.png --seed 0
    python -m precompute.world bench
    python -m precompute.world write OUT_DIR --count 1000 --seed 0

A contact sheet is the quickest way to judge whether shapes and words are still
recognisable at 64 px, which is what the toy models will see.
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from . import WORDS, WorldConfig, caption_vocabulary, generate, render_text, write_dataset


def contact_sheet(path: str, seed: int = 0, start: int = 0, n: int = 64, cols: int = 8, zoom: int = 2,
                  config: WorldConfig = WorldConfig()) -> list[str]:
    S = config.image_size * zoom
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (S + 2), rows * (S + 2)), (255, 255, 255))
    captions = []
    for k in range(n):
        s = generate(seed, start + k, config)
        sheet.paste(s.image.resize((S, S), Image.NEAREST), ((k % cols) * (S + 2), (k // cols) * (S + 2)))
        captions.append(s.caption)
    sheet.save(path)
    return captions


def bench(n: int = 500, seed: int = 0) -> dict:
    generate(seed, 0)
    t = time.perf_counter()
    for i in range(n):
        generate(seed, i)
    gen_ms = (time.perf_counter() - t) / n * 1e3
    words = list(WORDS)
    for w in words:
        render_text(w)
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        for w in words:
            render_text(w)
    wps = reps * len(words) / (time.perf_counter() - t)
    return {"generate_ms_per_sample": round(gen_ms, 3), "render_text_words_per_s": round(wps),
            "vocabulary_size": len(caption_vocabulary())}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m precompute.world")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sheet")
    a.add_argument("path")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--start", type=int, default=0)
    a.add_argument("--n", type=int, default=64)
    b = sub.add_parser("bench")
    b.add_argument("--n", type=int, default=500)
    w = sub.add_parser("write")
    w.add_argument("out_dir")
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--start", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "sheet":
        for k, c in enumerate(contact_sheet(args.path, args.seed, args.start, args.n)):
            print(f"{k:3d}  {c}")
    elif args.cmd == "bench":
        print(bench(args.n))
    else:
        print(write_dataset(args.out_dir, args.count, args.seed, start=args.start))


if __name__ == "__main__":
    main()
