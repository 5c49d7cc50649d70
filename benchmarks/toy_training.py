"""Training step of the toy models: torch.compile against eager mode, same batch, same machine.

Target: each recipe trains in at most 30 minutes on 2 CPU cores, data and compilation
included; compiling is what lets toy-rn's recipe take 2,500 steps inside that. Times one full
optimisation step (forward, contrastive loss, backward, AdamW) of each model at its recipe's
batch size, eager and compiled interleaved, after warm-up (compilation is reported apart), and
prints one JSON object: per-step medians, the eager/compiled speed ratio and the projected
recipe time. A recipe that learns from a teacher (toy-vit) is also timed as it trains, its text
tower locked and read from caption embeddings computed once, with its teacher's hints ("taught"),
against the eager step that runs both towers.

    python benchmarks/toy_training.py [--arch toy-rn --arch toy-vit] [--repeats 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import open_clip  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import interleaved, machine, median  # noqa: E402
from precompute.toy import register_toy_configs  # noqa: E402
from precompute.toy.hints import HintHeads  # noqa: E402
from precompute.toy.train import (  # noqa: E402
    caption_features,
    deterministic_training,
    image_normalisation,
    learn_from_teacher,
    locked_text_forward,
    make_optimizer,
    make_tokenizer,
    normalise_pixels,
    recipe,
    train_step,
)


def _step_function(model: torch.nn.Module, forward, config, teacher: bool = False):
    """The recipe's own training step on a fixed random batch. With `teacher`, as a taught
    recipe trains: text tower locked and read from caption embeddings computed once, the
    distillation term on the teacher's embeddings and its hints."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (config.batch_size, 64, 64, 3), dtype=torch.uint8, generator=generator)
    images = normalise_pixels(pixels, *image_normalisation(model, torch.device("cpu")))
    tokens = torch.randint(1, 1000, (config.batch_size, 24), generator=generator)
    caption_ids = torch.arange(config.batch_size)
    targets, text, extra_loss, scaffolding = None, tokens, None, []
    if teacher:
        taught = learn_from_teacher(model, config.teacher, make_tokenizer(config.arch), pixels, torch.device("cpu"),
                                    None, [layer for _, layer in config.hints])
        targets, maps = taught.features, taught.maps
        forward = locked_text_forward(model, caption_features(model, tokens, torch.device("cpu")))
        text = caption_ids
        hints = HintHeads.for_teacher_maps(model.visual, config.hints, maps)
        scaffolding = [hints]

        def extra_loss() -> torch.Tensor:
            return config.hint_weight * hints.loss(maps)
    optimizer = make_optimizer(model, config, *scaffolding)

    def step() -> None:
        train_step(model, forward, optimizer, images, text, caption_ids, targets, config.distill_weight, extra_loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    register_toy_configs()
    torch.set_num_threads(2)
    deterministic_training()  # as train() runs every recipe
    results = {"machine": machine(), "models": {}}
    for arch in args.arch or ["toy-rn", "toy-vit"]:
        config = recipe(arch)
        torch.manual_seed(0)
        eager_model = open_clip.create_model(arch, pretrained=None).train()
        compiled_model = open_clip.create_model(arch, pretrained=None).train()
        eager = _step_function(eager_model, eager_model, config)
        compiled = _step_function(compiled_model, torch.compile(compiled_model), config)
        candidates = {"eager": eager, "compiled": compiled}
        if config.teacher:
            taught_model = open_clip.create_model(arch, pretrained=None).train()
            candidates["taught"] = _step_function(taught_model, taught_model, config, teacher=True)
        started = time.perf_counter()
        compiled()
        compile_seconds = time.perf_counter() - started
        for step in candidates.values():
            step()
        times = interleaved(candidates, args.repeats)
        eager_s, compiled_s = median(times["eager"]), median(times["compiled"])
        chosen = compiled_s if config.compile else eager_s
        taught = {}
        if config.teacher:
            chosen = median(times["taught"])
            taught = {"taught_step_s": round(chosen, 4), "speedup_taught_vs_eager": round(eager_s / chosen, 3)}
        results["models"][arch] = {
            "batch_size": config.batch_size,
            "recipe_steps": config.steps,
            "recipe_compiles": config.compile,
            "eager_step_s": round(eager_s, 4),
            "compiled_step_s": round(compiled_s, 4),
            "compile_s": round(compile_seconds, 1),
            "speedup_compiled_vs_eager": round(eager_s / compiled_s, 3),
            **taught,
            "projected_recipe_steps_min": round(chosen * config.steps / 60, 1),
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
