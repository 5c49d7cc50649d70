"""Asking the model about one image: concept discovery, zero-shot segmentation, ablations,
spurious cues and maximal text (`004_…`, sections 5.1-5.3; `000_…`, "Understanding Language").

Everything here stands on a layer's neuron directions r_n, mean effects b_n and significance
thresholds (precompute.directions), and on the sparse decompositions of the directions over a
text pool (precompute.omp), given as a dense coefficient matrix gamma [N, M] (neuron x text).

- Concept discovery: the neurons whose effect on the image stands out, ||phi_n(I) - b_n|| above
  the neuron's threshold, and the texts they add up to:
      score(text j) = sum_{n active} gamma[n, j] * ||phi_n(I) - b_n||,
  over one layer or summed over several.
- Zero-shot segmentation for a class: the neurons (over a set of layers) whose directions align
  most with the class's text embedding, |<r_n, e(class)>| (top 200); the mean of their spatial
  activation maps, upsampled to the image, min-max normalised, thresholded at 0.5.
- Ablations: units of one or several layers silenced (to zero, or to their dataset mean) in every
  forward pass; the zero-shot prediction and the segmentation are read again with them silenced.
- Spurious cues for (c1 -> c2): v = e(c2) - e(c1); the neurons most aligned with v, |<r_n, v>|
  (top k); score(word j) = sum_n gamma[n, j] <r_n, v>, leaving out words too close to c2.
- Maximal text for a neuron: the token sequence maximising <e(text), r_n>, by hill climbing
  from the best pool words, with replacements proposed by the gradient of the objective with
  respect to the one-hot tokens (the embedding gradient), each proposal checked exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from precompute.errors import Problem
from precompute.registry import LoadedModel

SEGMENTATION_NEURONS = 200
SEGMENTATION_THRESHOLD = 0.5
CONCEPT_TEXTS = 10
CUE_NEURONS = 100
CUE_WORDS = 25
CUE_MAX_SIMILARITY = 0.8  # words whose embedding is closer than this to e(c2) are c2's synonyms
ABLATION_MODES = ("zero", "mean")


# -- the pieces of knowledge a layer brings ----------------------------------------------------------
@dataclass(frozen=True)
class LayerKnowledge:
    """What concept discovery and segmentation need of one layer.

    Row i describes unit `units[i]`. `coefficients` [N, M] is the dense sparse-code matrix of
    the directions over `texts` (zero where a text is not among a neuron's terms); it may be
    None where only segmentation (directions) is wanted."""

    layer: str
    units: np.ndarray  # [N] int64
    directions: np.ndarray  # [N, d]
    mean_effects: np.ndarray  # [N, d]
    thresholds: np.ndarray  # [N]
    texts: tuple[str, ...] = ()
    coefficients: np.ndarray | None = None  # [N, M]

    def __post_init__(self) -> None:
        n = len(self.units)
        if self.directions.shape[0] != n or self.mean_effects.shape != self.directions.shape or self.thresholds.shape != (n,):
            raise ValueError("units, directions, mean_effects and thresholds must describe the same neurons")
        if self.coefficients is not None and self.coefficients.shape != (n, len(self.texts)):
            raise ValueError(f"coefficients must be [{n}, {len(self.texts)}], got {self.coefficients.shape}")


def dense_coefficients(units: Sequence[int], texts: Sequence[str],
                       terms: Mapping[int, Sequence[tuple[str, float]]]) -> np.ndarray:
    """[N, M] from each unit's (text, coefficient) terms (texts missing from `texts` dropped)."""
    column = {text: j for j, text in enumerate(texts)}
    out = np.zeros((len(units), len(texts)), dtype=np.float32)
    for i, unit in enumerate(units):
        for text, coefficient in terms.get(int(unit), ()):
            j = column.get(text)
            if j is not None:
                out[i, j] += float(coefficient)
    return out


# The authors' per-dimension scaling of the dictionary names what a picture shows far better than
# unit-length atoms: on the toy models' 50 held-out one-object pictures (tests/concept_semantics.py),
# colour and shape both among the top 10 texts for 56 % vs 32 % (toy-vit, last layer) and 78 % vs
# 46 % (toy-rn) with 8 terms. It is also what `microscope precompute decompose` stores for the demo.
DISCOVERY_NORMALISATION = "per-dimension"


def decompose_layer(directions: np.ndarray, text_embeddings: torch.Tensor, terms: int = 32,
                    normalisation: str = DISCOVERY_NORMALISATION) -> np.ndarray:
    """Dense [N, M] OMP coefficients of a layer's directions over a pool's embeddings."""
    from precompute.omp import omp, text_dictionary

    dictionary = text_dictionary(text_embeddings.float(), normalisation)
    codes = omp(dictionary, torch.as_tensor(directions, dtype=torch.float32), min(terms, dictionary.shape[0]))
    return codes.dense(dictionary.shape[0]).float().numpy()


# -- concept discovery -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    text: str
    score: float
    neurons: list[dict]  # {"layer", "unit", "coefficient", "norm", "contribution"} largest |contribution| first


@dataclass(frozen=True)
class Concepts:
    layer: str  # the last of `layers` (the only one for a single layer)
    active: list[dict]  # {"layer", "unit", "norm", "threshold"} largest norm first
    concepts: list[Concept]
    layers: tuple[str, ...] = ()


def discover_concepts(knowledge: LayerKnowledge, effects: torch.Tensor | np.ndarray, *, top: int = CONCEPT_TEXTS,
                      neurons_per_text: int = 8) -> Concepts:
    """Concept discovery on one image's effects [N, d] (rows as in `knowledge`)."""
    return discover_concepts_in_layers([knowledge], {knowledge.layer: effects}, top=top, neurons_per_text=neurons_per_text)


def discover_concepts_in_layers(knowledges: Sequence[LayerKnowledge], effects: Mapping[str, torch.Tensor | np.ndarray],
                                *, top: int = CONCEPT_TEXTS, neurons_per_text: int = 8) -> Concepts:
    """Concept discovery over the active neurons of several layers decomposed over one pool
    (`effects[layer]` [N, d] of one image, rows as in its knowledge): a text's score is the sum
    over every active neuron of every layer, as in discover_concepts_over_layers, and each text
    lists the neurons behind it with their layer. on_common_texts puts layers decomposed over
    different term sets onto one."""
    if not knowledges:
        raise ValueError("concept discovery needs at least one layer")
    texts = knowledges[0].texts
    if any(k.coefficients is None for k in knowledges):
        raise ValueError("concept discovery needs the layer's decompositions")
    if any(k.texts != texts for k in knowledges):
        raise ValueError("every layer needs decompositions over the same texts (see on_common_texts)")
    layer_of, rows, norm_blocks, coefficient_blocks, threshold_blocks = [], [], [], [], []
    for li, knowledge in enumerate(knowledges):
        phi = effects[knowledge.layer]
        phi = np.asarray(phi.detach().cpu().numpy() if isinstance(phi, torch.Tensor) else phi, dtype=np.float32)
        norms = np.linalg.norm(phi - knowledge.mean_effects, axis=1)
        active = np.nonzero((norms > knowledge.thresholds) & (knowledge.thresholds > 0))[0]
        layer_of.append(np.full(len(active), li))
        rows.append(active)
        norm_blocks.append(norms[active])
        coefficient_blocks.append(knowledge.coefficients[active])
        threshold_blocks.append(knowledge.thresholds[active])
    layer_of, rows = np.concatenate(layer_of), np.concatenate(rows)
    norms, thresholds = np.concatenate(norm_blocks), np.concatenate(threshold_blocks)
    coefficients = np.concatenate(coefficient_blocks).reshape(len(rows), len(texts))
    # Largest norm first; among equals, layer order then unit order (stable).
    order = np.argsort(-norms, kind="stable")
    layer_of, rows, norms, thresholds, coefficients = layer_of[order], rows[order], norms[order], thresholds[order], coefficients[order]
    weights = coefficients * norms[:, None]  # [A, M]
    scores = weights.sum(axis=0)
    ranked = np.lexsort((np.arange(len(scores)), -scores))
    units = [knowledges[l].units[r] for l, r in zip(layer_of, rows)]
    names = [knowledges[l].layer for l in layer_of]
    concepts = []
    for j in ranked[: max(0, top)]:
        if not len(rows) or scores[j] <= 0:
            break
        behind = np.nonzero(coefficients[:, j])[0]
        behind = behind[np.argsort(-np.abs(weights[behind, j]), kind="stable")][:neurons_per_text]
        concepts.append(Concept(texts[j], float(scores[j]), [
            {"layer": names[i], "unit": int(units[i]), "coefficient": float(coefficients[i, j]), "norm": float(norms[i]),
             "contribution": float(weights[i, j])} for i in behind]))
    active = [{"layer": names[i], "unit": int(units[i]), "norm": float(norms[i]), "threshold": float(thresholds[i])}
              for i in range(len(rows))]
    layers = tuple(k.layer for k in knowledges)
    return Concepts(layers[-1], active, concepts, layers)


def on_common_texts(knowledges: Sequence[LayerKnowledge]) -> tuple[LayerKnowledge, ...]:
    """The layers with their coefficient columns over one sorted union of their texts (a text a
    layer's decompositions lack is a zero column), so that their scores add up text by text."""
    texts = tuple(sorted({t for k in knowledges for t in k.texts}))
    out = []
    for knowledge in knowledges:
        if knowledge.texts == texts or knowledge.coefficients is None:
            out.append(knowledge)
            continue
        column = {t: j for j, t in enumerate(texts)}
        dense = np.zeros((len(knowledge.units), len(texts)), dtype=np.float32)
        dense[:, [column[t] for t in knowledge.texts]] = knowledge.coefficients
        out.append(LayerKnowledge(knowledge.layer, knowledge.units, knowledge.directions, knowledge.mean_effects,
                                  knowledge.thresholds, texts, dense))
    return tuple(out)


def discover_concepts_over_layers(knowledges: Sequence[LayerKnowledge], effects: Mapping[str, torch.Tensor | np.ndarray],
                                  *, top: int = CONCEPT_TEXTS) -> list[tuple[str, float]]:
    """(text, score) of the top texts when the active neurons of several layers (decomposed over
    one pool) add up: each text's score is the sum of its per-layer scores. A ViT writes what it
    sees from several late layers (the article segments with layers 8-10 of ViT-B-32); on toy-vit
    its three MLP layers together name colour and shape for 80 % of held-out pictures, the last
    layer alone for 56 % (tests/concept_semantics.py)."""
    texts = knowledges[0].texts
    if any(k.texts != texts or k.coefficients is None for k in knowledges):
        raise ValueError("every layer needs decompositions over the same pool")
    total = np.zeros(len(texts))
    for knowledge in knowledges:
        phi = effects[knowledge.layer]
        phi = np.asarray(phi.detach().cpu().numpy() if isinstance(phi, torch.Tensor) else phi, dtype=np.float32)
        norms = np.linalg.norm(phi - knowledge.mean_effects, axis=1)
        active = (norms > knowledge.thresholds) & (knowledge.thresholds > 0)
        total += (knowledge.coefficients[active] * norms[active, None]).sum(axis=0)
    order = np.lexsort((np.arange(len(total)), -total))
    return [(texts[j], float(total[j])) for j in order[: max(0, top)] if total[j] > 0]


# -- segmentation ----------------------------------------------------------------------------------
def aligned_neurons(knowledges: Sequence[LayerKnowledge], vector: torch.Tensor | np.ndarray,
                    top: int = SEGMENTATION_NEURONS) -> list[tuple[str, int, float]]:
    """(layer, unit, <r_n, v>) of the `top` neurons with the largest |<r_n, v>| over the layers."""
    v = np.asarray(vector.detach().cpu().numpy() if isinstance(vector, torch.Tensor) else vector, dtype=np.float32)
    rows = []
    for knowledge in knowledges:
        dots = knowledge.directions @ v
        rows += [(knowledge.layer, int(unit), float(dot)) for unit, dot in zip(knowledge.units, dots)]
    rows.sort(key=lambda row: (-abs(row[2]), row[0], row[1]))
    return rows[:top]


@dataclass(frozen=True)
class Segmentation:
    heat: np.ndarray  # [H, W] in [0, 1]
    mask: np.ndarray  # [H, W] bool
    neurons: list[tuple[str, int, float]]
    grid: tuple[int, int]


def segment(maps: Mapping[str, torch.Tensor], neurons: Sequence[tuple[str, int, float]], size: tuple[int, int], *,
            threshold: float = SEGMENTATION_THRESHOLD) -> Segmentation:
    """The mean of the neurons' spatial maps (`maps[layer]` [units, h, w] of one image),
    upsampled bilinearly to `size` (H, W), min-max normalised, thresholded."""
    if not neurons:
        raise ValueError("segmentation needs at least one neuron")
    height, width = size
    total = torch.zeros(height, width)
    grid = None
    for layer in dict.fromkeys(name for name, _, _ in neurons):
        units = torch.tensor([unit for name, unit, _ in neurons if name == layer], dtype=torch.long)
        layer_maps = maps[layer].float().cpu()[units]  # [k, h, w]
        grid = grid or tuple(layer_maps.shape[-2:])
        up = F.interpolate(layer_maps.sum(0)[None, None], size=(height, width), mode="bilinear", align_corners=False)
        total += up[0, 0]
    heat = total / len(neurons)
    low, high = float(heat.min()), float(heat.max())
    heat = (heat - low) / (high - low) if high > low else torch.zeros_like(heat)
    heat_np = heat.numpy().astype(np.float32)
    return Segmentation(heat_np, heat_np >= threshold, list(neurons), grid)


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(mask, truth).sum()
    return float(np.logical_and(mask, truth).sum() / union) if union else 1.0


# -- running the tower: effects, maps and embeddings in one pass, with ablations ---------------------
@dataclass(frozen=True)
class Ablation:
    """Units of one layer set to zero or to a per-unit value (their dataset mean)."""

    layer: str
    units: tuple[int, ...]
    mode: str = "zero"
    values: tuple[float, ...] | None = None  # per unit, for mode "mean"

    def check(self, loaded: LoadedModel) -> None:
        layer = loaded.spec.layer(self.layer)
        if self.mode not in ABLATION_MODES:
            raise Problem(422, "bad-ablation-mode", f"ablation mode is one of {', '.join(ABLATION_MODES)}, not {self.mode!r}")
        bad = [u for u in self.units if not 0 <= u < layer.units]
        if bad:
            raise Problem(422, "unknown-unit", f"{self.layer} has units 0 to {layer.units - 1}; no unit {bad[0]}")
        if self.mode == "mean" and (self.values is None or len(self.values) != len(self.units)):
            raise Problem(422, "no-unit-means", f"ablating to the mean needs each unit's dataset mean ({self.layer})")


@contextmanager
def ablated(loaded: LoadedModel, ablations: Sequence[Ablation]) -> Iterator[None]:
    """While open, the ablated units output zero (or their mean) in every forward pass."""
    handles = []
    try:
        for ablation in ablations:
            ablation.check(loaded)
            if not ablation.units:
                continue
            layer = loaded.spec.layer(ablation.layer)
            index = torch.tensor(ablation.units, dtype=torch.long)
            values = torch.tensor(ablation.values if ablation.mode == "mean" else [0.0] * len(index), dtype=torch.float32)

            def hook(_module, _inputs, output, index=index, values=values, conv=layer.kind == "conv"):
                output = output.clone()
                if conv:
                    output[:, index.to(output.device)] = values.to(output)[None, :, None, None]
                else:
                    output[..., index.to(output.device)] = values.to(output)
                return output

            handles.append(loaded.model.visual.get_submodule(layer.module).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Reading:
    """One batch's pass: unit-length image embeddings, spatial maps per layer, effects per layer."""

    embeddings: torch.Tensor  # [B, d]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [B, units, h, w]
    effects: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [B, N, d]


@torch.inference_mode()
def read(loaded: LoadedModel, pixels: torch.Tensor, *, map_layers: Sequence[str] = (), effect_layers: Sequence[str] = (),
         ablations: Sequence[Ablation] = ()) -> Reading:
    """Embeddings, spatial maps of `map_layers` and lens effects of `effect_layers` of a batch
    of preprocessed images, with `ablations` in force (the lens's own pass sees them too)."""
    from precompute.capture import _to_capture_layout, spatial_maps
    from precompute.lens import layer_effects

    visual = loaded.model.visual
    batch_first = getattr(getattr(visual, "transformer", None), "batch_first", True)
    kept: dict[str, torch.Tensor] = {}
    specs = [loaded.spec.layer(name) for name in dict.fromkeys(map_layers)]
    loaded.model.eval()
    pixels = pixels.to(loaded.device)
    with ablated(loaded, ablations):
        handles = []
        for spec in specs:
            def keep(_m, _i, output, spec=spec):
                kept[spec.name] = _to_capture_layout(spec, output, batch_first)
            handles.append(visual.get_submodule(spec.module).register_forward_hook(keep))
        # One forward pass serves everything: the lens's own pass (when effects are wanted) also
        # fills the maps and, through a hook on the tower, the embedding.
        handles.append(visual.register_forward_hook(lambda _m, _i, output: kept.__setitem__("__embedding__", output)))
        effects = {}
        try:
            if effect_layers:
                effects = {name: value.values for name, value in layer_effects(loaded, pixels, list(effect_layers)).items()}
            else:
                visual(pixels)
        finally:
            for handle in handles:
                handle.remove()
        embeddings = F.normalize(kept.pop("__embedding__").float(), dim=-1)
    maps = {}
    for spec in specs:
        value = spatial_maps(kept[spec.name], spec)
        if value is None:
            raise Problem(422, "layer-not-spatial", f"{spec.name} has no spatial map to segment with")
        maps[spec.name] = value.float().cpu()
    return Reading(embeddings.cpu(), maps, {k: v.cpu() for k, v in effects.items()})


@torch.inference_mode()
def unit_means(loaded: LoadedModel, pixels: torch.Tensor, layer: str, batch_size: int = 128) -> np.ndarray:
    """Each unit's mean activation over images and positions: what a 'mean' ablation sets."""
    from precompute.capture import capture, spatial_maps

    spec = loaded.spec.layer(layer)
    total, count = None, 0
    for start in range(0, len(pixels), batch_size):
        activation = capture(loaded, pixels[start:start + batch_size], [layer])[layer]
        maps = spatial_maps(activation, spec)
        values = (maps.flatten(2).mean(2) if maps is not None else activation).double().sum(0)
        total = values if total is None else total + values
        count += activation.shape[0]
    return (total / count).float().cpu().numpy()


def zero_shot(loaded: LoadedModel, embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """[B, classes] probabilities from unit-length image and class embeddings."""
    from precompute.zeroshot import probabilities

    return probabilities(loaded, embeddings, class_embeddings)


# -- spurious cues ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cue:
    text: str
    score: float
    similarity_to_target: float
    neurons: list[dict]  # {"layer", "unit", "coefficient", "alignment"}


def spurious_cues(knowledges: Sequence[LayerKnowledge], source: torch.Tensor, target: torch.Tensor,
                  text_embeddings: torch.Tensor, *, neurons: int = CUE_NEURONS, top: int = CUE_WORDS,
                  max_similarity: float = CUE_MAX_SIMILARITY, exclude: Sequence[str] = ()) -> list[Cue]:
    """Words that could push an image of the source class toward the target class (eq. 6).

    `source`, `target`: unit-length class embeddings; `text_embeddings` [M, d] the pool's (the
    same texts as every knowledge's `texts`). Words closer than `max_similarity` (cosine) to the
    target, and the `exclude`d ones, are left out."""
    texts = knowledges[0].texts
    if any(k.texts != texts or k.coefficients is None for k in knowledges):
        raise ValueError("every layer needs decompositions over the same pool")
    v = (target.float() - source.float()).cpu()
    chosen = aligned_neurons(knowledges, v, neurons)
    by_layer = {k.layer: k for k in knowledges}
    scores = np.zeros(len(texts), dtype=np.float64)
    rows = []
    for layer, unit, alignment in chosen:
        knowledge = by_layer[layer]
        row = int(np.searchsorted(knowledge.units, unit))
        coefficients = knowledge.coefficients[row]
        scores += coefficients * alignment
        rows.append((layer, unit, alignment, coefficients))
    similarity = (F.normalize(text_embeddings.float(), dim=-1) @ F.normalize(target.float().cpu(), dim=0)).numpy()
    excluded = {text.strip().lower() for text in exclude}
    out = []
    for j in np.lexsort((np.arange(len(scores)), -scores)):
        if len(out) >= top or scores[j] <= 0:
            break
        if similarity[j] > max_similarity or texts[j].lower() in excluded:
            continue
        behind = sorted(((layer, unit, float(c[j]), alignment) for layer, unit, alignment, c in rows if c[j] != 0),
                        key=lambda r: -abs(r[2] * r[3]))[:8]
        out.append(Cue(texts[j], float(scores[j]), float(similarity[j]),
                       [{"layer": layer, "unit": unit, "coefficient": c, "alignment": a} for layer, unit, c, a in behind]))
    return out


# -- maximal text ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaximalText:
    tokens: tuple[int, ...]
    text: str
    score: float  # <e(text), r_n>, e unit length
    start_text: str  # the best single token (word) of the starting set
    start_score: float
    steps: int


MAXIMAL_TEXT_DEFAULTS = {"length": 3, "steps": 20, "candidates": 16, "starts": 4}
GRADIENT_ELEMENTS = 1 << 24  # per backward pass, of the [B, length, vocab] token gradient (CLIP's BPE has 49,408 tokens)


def _special_ids(loaded: LoadedModel) -> tuple[int, int, int]:
    """(start, end, pad) token ids of the model's tokenizer."""
    tokenizer = loaded.tokenizer
    if hasattr(tokenizer, "eot"):  # the toy models' word tokenizer
        from precompute.toy.tokenizer import PAD, SOT

        return SOT, tokenizer.eot, PAD
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    return int(getattr(inner, "sot_token_id")), int(getattr(inner, "eot_token_id")), 0


def _vocabulary_ids(loaded: LoadedModel) -> torch.Tensor:
    """The token ids a maximal text may use: every word (toy) or every ordinary BPE token."""
    tokenizer = loaded.tokenizer
    start, end, pad = _special_ids(loaded)
    if hasattr(tokenizer, "vocabulary"):
        from precompute.toy.tokenizer import FIRST_WORD_ID

        return torch.arange(FIRST_WORD_ID, FIRST_WORD_ID + len(tokenizer.vocabulary))
    vocab = loaded.model.token_embedding.num_embeddings
    ids = torch.arange(vocab)
    return ids[(ids != start) & (ids != end) & (ids != pad)]


def _decode(loaded: LoadedModel, tokens: Sequence[int]) -> str:
    tokenizer = loaded.tokenizer
    if hasattr(tokenizer, "vocabulary"):
        from precompute.toy.tokenizer import FIRST_WORD_ID

        return " ".join(tokenizer.vocabulary[t - FIRST_WORD_ID] for t in tokens)
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    return inner.decode(list(tokens)).strip() if hasattr(inner, "decode") else " ".join(map(str, tokens))


def _context(loaded: LoadedModel) -> int:
    model = loaded.model
    return int(model.positional_embedding.shape[0]) if hasattr(model, "positional_embedding") else 77


def _causal_prefix(loaded: LoadedModel) -> bool:
    """Whether the text tower reads a sequence's embedding from its end token through a causal
    mask: then the padding after the end token changes nothing, and the tower can run on the
    sequence alone (start, tokens, end), several times cheaper than the whole context."""
    model = loaded.model
    return (all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"))
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos"))


def _sequence_ids(loaded: LoadedModel, sequences: torch.Tensor) -> torch.Tensor:
    """[B, width] token ids: start, the sequence, end, then padding to the context (only where
    the tower needs the whole context, see `_causal_prefix`)."""
    start, end, pad = _special_ids(loaded)
    batch, length = sequences.shape
    width = length + 2 if _causal_prefix(loaded) else _context(loaded)
    out = torch.full((batch, width), pad, dtype=torch.long)
    out[:, 0] = start
    out[:, 1:1 + length] = sequences
    out[:, 1 + length] = end
    return out


def _encode(loaded: LoadedModel, ids: torch.Tensor, token_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-length text embeddings [B, d] of token ids [B, width]: open_clip's `encode_text`,
    on a prefix of the context where the tower is causal (`_causal_prefix`). `token_vectors`
    [B, width, w], when given, stand in for the token embeddings (to take gradients on)."""
    model = loaded.model
    if not _causal_prefix(loaded):
        if token_vectors is not None:
            handle = model.token_embedding.register_forward_hook(lambda _m, _i, _o: token_vectors)
            try:
                return F.normalize(model.encode_text(ids).float(), dim=-1)
            finally:
                handle.remove()
        return F.normalize(model.encode_text(ids).float(), dim=-1)
    from open_clip.transformer import text_global_pool

    width = ids.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = (model.token_embedding(ids) if token_vectors is None else token_vectors).to(cast)
    x = x + model.positional_embedding[:width].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:width, :width])
    x = model.ln_final(x)
    x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x.float(), dim=-1)


def _scores(loaded: LoadedModel, sequences: torch.Tensor, directions: torch.Tensor, batch: int) -> torch.Tensor:
    """<e(sequence_i), directions_i> for token sequences [B, length] and directions [B, d]."""
    out = []
    with torch.inference_mode():
        for begin in range(0, len(sequences), batch):
            ids = _sequence_ids(loaded, sequences[begin:begin + batch]).to(loaded.device)
            e = _encode(loaded, ids)
            out.append((e * directions[begin:begin + batch].to(e.device)).sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _proposal_tokens(loaded: LoadedModel, sequences: torch.Tensor, directions: torch.Tensor, allowed: torch.Tensor,
                     candidates: int, batch: int) -> torch.Tensor:
    """[B, length, candidates]: at each position, the allowed tokens with the largest first-order
    gain of <e(sequence_i), directions_i>, from the gradient with respect to the one-hot tokens
    (the embedding gradient). With one-hot tokens h the token vectors are h W, so that gradient
    is g W^T, g the gradient at the token vectors: no [B, width, vocab] one-hot tensor is built."""
    weight = loaded.model.token_embedding.weight.detach()
    length = sequences.shape[1]
    out = []
    for begin in range(0, len(sequences), batch):
        now = sequences[begin:begin + batch]
        ids = _sequence_ids(loaded, now).to(weight.device)
        vectors = F.embedding(ids, weight).requires_grad_(True)
        with torch.enable_grad():
            e = _encode(loaded, ids, vectors)
            (e * directions[begin:begin + batch].to(e.device)).sum().backward()
        grad = (vectors.grad[:, 1:1 + length] @ weight.T).cpu()  # [b, length, vocab]
        gain = grad - grad.gather(2, now[:, :, None])
        gain[:, :, ~allowed] = -torch.inf
        out.append(gain.topk(candidates, dim=2).indices)
    return torch.cat(out)


def maximal_texts(loaded: LoadedModel, directions: torch.Tensor | np.ndarray, *, pool_tokens: torch.Tensor | None = None,
                  length: int = 3, steps: int = 20, candidates: int = 16, starts: int = 4,
                  batch: int = 4096) -> list[MaximalText]:
    """Hill climbing over token sequences of `length` tokens toward <e(text), r_n>, for every
    direction r_n of `directions` [N, d] at once: each step runs all neurons' proposals through
    the text tower together (`batch` sequences a pass).

    Per neuron: starts from the `starts` best single tokens (of the vocabulary, or of
    `pool_tokens`), each followed by copies of the best (the best by the second best), the best
    of those kept. Each step takes the gradient of the score with respect to the one-hot tokens,
    proposes at every position the `candidates` tokens with the largest first-order gain, scores
    all proposals exactly and keeps the best if it improves; a neuron stops when nothing does.
    Each neuron's result is the best text scored: the climbed sequence, or its best single
    token where no sequence of `length` tokens reaches that."""
    if len(directions) == 0:
        return []
    r = F.normalize(torch.as_tensor(np.asarray(directions), dtype=torch.float32).reshape(len(directions), -1), dim=1)
    n = len(r)
    model = loaded.model
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        vocabulary = _vocabulary_ids(loaded) if pool_tokens is None else pool_tokens.unique()
        starts = max(1, min(starts, len(vocabulary)))
        with torch.inference_mode():  # every single token's embedding, once for all neurons
            ids = _sequence_ids(loaded, vocabulary[:, None])
            singles = torch.cat([_encode(loaded, ids[b:b + batch].to(loaded.device)).cpu()
                                 for b in range(0, len(ids), batch)]) @ r.T  # [V, N]
        order = singles.T.argsort(dim=1, descending=True, stable=True)[:, :starts]  # [N, S]
        best_single = vocabulary[order]
        seeds = best_single[:, :1, None].repeat(1, starts, length)  # each good token, then the best
        seeds[:, 0, 1:] = best_single[:, min(1, starts - 1), None]  # the best, then the second best
        seeds[:, :, 0] = best_single
        rows = torch.arange(n)
        seed_scores = _scores(loaded, seeds.reshape(n * starts, length), r.repeat_interleave(starts, 0), batch)
        seed_scores = seed_scores.reshape(n, starts)
        current = seeds[rows, seed_scores.argmax(1)].clone()  # [N, length]
        score = seed_scores.max(1).values.clone()
        allowed = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
        allowed[_vocabulary_ids(loaded)] = True
        taken = torch.zeros(n, dtype=torch.long)
        active = torch.ones(n, dtype=torch.bool)
        positions = torch.arange(length)
        gradient_batch = max(1, GRADIENT_ELEMENTS // (length * len(allowed)))
        for step in range(1, steps + 1):
            index = active.nonzero().flatten()
            if not len(index):
                break
            taken[index] = step
            now = current[index]
            count = min(candidates, int(allowed.sum()))
            top = _proposal_tokens(loaded, now, r[index], allowed, count, gradient_batch)  # [A, length, C]
            proposals = now[:, None, None, :].repeat(1, length, count, 1)  # [A, length, C, length]
            proposals[:, positions, :, positions] = top.permute(1, 0, 2)
            proposals = proposals.reshape(len(index), length * count, length)
            # A proposal that keeps the current token scores as the current text: never an improvement.
            proposal_scores = _scores(loaded, proposals.reshape(-1, length),
                                      r[index].repeat_interleave(length * count, 0), batch).reshape(len(index), -1)
            best_score, best = proposal_scores.max(1)
            improved = best_score > score[index] + 1e-7
            current[index[improved]] = proposals[improved.nonzero().flatten(), best[improved]]
            score[index[improved]] = best_score[improved]
            active[index[~improved]] = False
        out = []
        for i in range(n):
            start_token, start_score = int(best_single[i, 0]), float(singles[order[i, 0], i])
            # The best text seen: a single word can beat every sequence of `length` tokens.
            tokens = tuple(int(t) for t in current[i]) if float(score[i]) >= start_score else (start_token,)
            best = max(float(score[i]), start_score)
            out.append(MaximalText(tokens, _decode(loaded, tokens), best, _decode(loaded, [start_token]), start_score,
                                   int(taken[i])))
        return out
    finally:
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
        model.train(was_training)


def maximal_text(loaded: LoadedModel, direction: torch.Tensor | np.ndarray, *, pool_tokens: torch.Tensor | None = None,
                 length: int = 3, steps: int = 20, candidates: int = 16, starts: int = 4) -> MaximalText:
    """The maximal text of one direction (`maximal_texts` for a single neuron)."""
    vector = torch.as_tensor(np.asarray(direction), dtype=torch.float32).flatten()[None]
    return maximal_texts(loaded, vector, pool_tokens=pool_tokens, length=length, steps=steps, candidates=candidates,
                         starts=starts)[0]

# -- what the pages ask for -------------------------------------------------------------------------
VIT_LATE = "vit-late"  # a layer set only ViT towers have: MLP layers 8-10 of a 12-block tower, the last three otherwise
LAYER_SETS = (VIT_LATE, "stored")


def vit_late_layers(depth: int) -> list[str]:
    blocks = [8, 9, 10] if depth == 12 else list(range(max(0, depth - 3), depth))
    return [f"transformer.resblocks.{b}.mlp" for b in blocks]


def check_layer_set(arch_family: str, spec: str | None) -> None:
    """Refuse a named layer set the tower does not have (a 422 Problem with a reason)."""
    if (spec or "").strip() == VIT_LATE and arch_family != "vit":
        raise Problem(422, "layer-set-needs-vit", f"the layer set {VIT_LATE!r} (MLP layers 8-10) exists only for ViT "
                      "towers; name a ResNet's layers (e.g. layer4) instead")


def default_concept_layers(arch_family: str, depth: int, decomposed: Sequence[str]) -> list[str]:
    """The layers concept discovery adds up unless told: a ViT's late MLP layers, a ResNet's
    `layer4`, among those with directions and decompositions (else all of those). Summing the
    late layers is what names colour and shape best on the toy models (toy-vit: 80 % of
    held-out pictures over blocks 3-5, 56 % on the last alone, 66 % over all six)."""
    wanted = vit_late_layers(depth) if arch_family == "vit" else ["layer4"]
    return [name for name in decomposed if name in wanted] or list(decomposed)


def segmentation_layers(arch_family: str, depth: int, stored: Sequence[str], spec: str | None) -> list[str]:
    """The layers segmentation reads: an explicit comma list, a named set, or the default
    (ViT-B-32: MLP layers 8-10; other ViTs: every MLP layer with stored directions, toy-vit's
    included; ResNets: `layer4`). Refusals are 422 Problems with a reason."""
    spec = (spec or "").strip()
    if not spec:
        if arch_family == "vit":
            late = [name for name in vit_late_layers(depth) if name in stored]
            chosen = late if depth == 12 and late else [name for name in stored if name.endswith(".mlp")]
        else:
            chosen = [name for name in stored if name == "layer4"]
        if not chosen:
            raise Problem(422, "no-directions", "no layer of this model has stored directions to segment with; run "
                          "`microscope precompute directions` first")
        return chosen
    if spec == VIT_LATE:
        check_layer_set(arch_family, spec)
        chosen = vit_late_layers(depth)
    elif spec == "stored":
        chosen = list(stored)
    else:
        chosen = list(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    missing = [name for name in chosen if name not in stored]
    if missing:
        raise Problem(422, "no-directions", f"no stored directions for {', '.join(missing[:4])}; layers with directions: "
                      f"{', '.join(stored) or 'none'}")
    return chosen


@torch.inference_mode()
def class_embedding(loaded: LoadedModel, name: str) -> torch.Tensor:
    """The unit-length text embedding of a class name, as the zero-shot classifier names it: a
    world shape or colour by the world's prompt ensemble on a toy model, otherwise the mean of
    the name's prompts (OpenAI's templates for a real CLIP, the world's singular ones for a toy)."""
    from precompute import zeroshot

    name = (name or "").strip()
    if not name:
        raise Problem(422, "empty-class-name", "the class name is empty")
    if zeroshot.is_toy(loaded):
        for set_id in ("world-shapes", "world-colors", "world"):
            labels = zeroshot.label_set(set_id)
            if name.lower() in (n.lower() for n in labels.names):
                return zeroshot.class_features(loaded, labels)[labels.index(name)].float().cpu()
        templates = zeroshot.TOY_USER_TEMPLATES
    else:
        import open_clip

        templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    return zeroshot._prompt_means(loaded, (name,), templates)[0].float().cpu()  # noqa: SLF001


def cached_class_embedding(loaded: LoadedModel, name: str, cache=None) -> torch.Tensor:
    """class_embedding, kept in `cache` (a precompute.zeroshot.TextFeatureCache) when one is given:
    a real CLIP's class name is the mean of 80 prompts through the text tower."""
    if cache is None:
        return class_embedding(loaded, name)
    return cache.get_keyed(loaded, ("class-embedding", (name or "").strip()), lambda: class_embedding(loaded, name))


def heat_png(heat: np.ndarray, mask: np.ndarray | None = None) -> bytes:
    """A heat map (and optionally its mask's outline) as an RGBA PNG to lay over the picture."""
    import io

    from PIL import Image

    h = np.clip(heat, 0, 1)
    rgba = np.zeros((*h.shape, 4), dtype=np.uint8)
    rgba[..., 0] = (255 * np.clip(2 * h, 0, 1)).astype(np.uint8)
    rgba[..., 1] = (255 * np.clip(2 * h - 1, 0, 1)).astype(np.uint8)
    rgba[..., 2] = (255 * (1 - h) * 0.3).astype(np.uint8)
    rgba[..., 3] = (40 + 160 * h).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(out, format="PNG")
    return out.getvalue()


# -- one request of the /discover page, computed for a batch of pictures ----------------------------
@dataclass(frozen=True, eq=False)
class DiscoverRequest:
    """What /discover asks of the model for one picture (compared by identity, batched by key).
    `concepts`: the layers whose active neurons add up (on one set of texts, on_common_texts);
    one LayerKnowledge stands for itself alone."""

    concepts: tuple[LayerKnowledge, ...] | LayerKnowledge | None
    segmentation: tuple[LayerKnowledge, ...]
    class_name: str | None
    labels: object  # a precompute.zeroshot.LabelSet
    ablations: tuple[Ablation, ...] = ()
    top_texts: int = CONCEPT_TEXTS
    top_classes: int = 5
    segmentation_neurons: int = SEGMENTATION_NEURONS

    def __post_init__(self) -> None:
        if isinstance(self.concepts, LayerKnowledge):
            object.__setattr__(self, "concepts", (self.concepts,))
        elif self.concepts is not None:
            object.__setattr__(self, "concepts", tuple(self.concepts) or None)

    def key(self) -> tuple:
        return (tuple(id(k) for k in self.concepts or ()), tuple(id(k) for k in self.segmentation), self.class_name, getattr(self.labels, "id", None),
                tuple((a.layer, a.units, a.mode, a.values) for a in self.ablations), self.top_texts, self.top_classes,
                self.segmentation_neurons)


def _concepts_dict(result: Concepts) -> dict:
    return {"layer": result.layer, "layers": list(result.layers), "active": result.active,
            "texts": [{"text": c.text, "score": c.score, "neurons": c.neurons} for c in result.concepts]}


def _segmentation_dict(seg: Segmentation, size: tuple[int, int]) -> dict:
    return {"heat_png": heat_png(seg.heat), "mask_png": mask_png(seg.mask), "grid": list(seg.grid), "size": list(size),
            "mask_fraction": float(seg.mask.mean()), "heat": seg.heat}


def analyse(loaded: LoadedModel, images: Sequence, requests: Sequence[DiscoverRequest], *, cache=None) -> list[dict]:
    """Concepts, segmentation and zero-shot prediction of PIL pictures, and again with the
    request's ablations in force. Pictures with the same request key share one batch."""
    from precompute.zeroshot import class_features, top_classes

    out: list[dict | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.key(), []).append(i)
    for rows in groups.values():
        request = requests[rows[0]]
        pixels = torch.stack([loaded.preprocess(images[i]) for i in rows])
        size = tuple(pixels.shape[-2:])
        classes = cache.get(loaded, request.labels) if cache is not None else class_features(loaded, request.labels)
        neurons = []
        if request.class_name is not None and request.segmentation:
            neurons = aligned_neurons(request.segmentation, cached_class_embedding(loaded, request.class_name, cache),
                                      request.segmentation_neurons)
        map_layers = list(dict.fromkeys(layer for layer, _, _ in neurons))
        effect_layers = [k.layer for k in request.concepts or ()]
        states = [("before", ())] + ([("after", request.ablations)] if request.ablations else [])
        readings = {}
        for state, ablations in states:
            readings[state] = read(loaded, pixels, map_layers=map_layers, effect_layers=effect_layers, ablations=ablations)
        for j, i in enumerate(rows):
            result: dict = {"pixels": pixels[j]}
            for state, _ in states:
                reading = readings[state]
                part: dict = {"prediction": top_classes(request.labels, zero_shot(loaded, reading.embeddings[j:j + 1],
                                                                                 classes)[0], request.top_classes)}
                if request.concepts:
                    effects = {layer: reading.effects[layer][j] for layer in effect_layers}
                    part["concepts"] = _concepts_dict(discover_concepts_in_layers(request.concepts, effects,
                                                                                  top=request.top_texts))
                if neurons:
                    seg = segment({layer: reading.maps[layer][j] for layer in map_layers}, neurons, size)
                    part["segmentation"] = _segmentation_dict(seg, size)
                result[state] = part
            result["neurons"] = [{"layer": layer, "unit": unit, "alignment": alignment} for layer, unit, alignment in neurons]
            out[i] = result
    return out  # type: ignore[return-value]


def cue_success(loaded: LoadedModel, images: Sequence, text: str, labels, target: int, *, cache=None) -> float:
    """The share of `images` (PIL pictures of the source class) that the model classifies as
    class `target` of `labels` once `text` is written on them (the article's fixed placement)."""
    from precompute.typographic import render_attack
    from precompute.zeroshot import classify

    attacked = [render_attack(image, text).image for image in images]
    probs = classify(loaded, attacked, labels, cache=cache)
    return float((probs.argmax(dim=1) == target).float().mean()) if len(attacked) else 0.0


@dataclass(frozen=True, eq=False)
class CuesRequest:
    """What /cues asks: layers with decompositions over one pool, a class pair, how many words."""

    knowledges: tuple[LayerKnowledge, ...]
    source: str
    target: str
    labels: object  # a LabelSet naming both classes, for the verification
    top: int = 10
    neurons: int = CUE_NEURONS
    verify: int = 24  # world pictures of the source class per cue (toy models and world shapes only)


def find_cues(loaded: LoadedModel, request: CuesRequest, *, cache=None) -> dict:
    """The cues for (source -> target) and, where the source is one of the world's shapes on a toy
    model, how often each cue written on `verify` world pictures of it makes the model say target."""
    from precompute.text_pools import encode_texts
    from precompute.world import COLORS, SHAPES, object_image

    texts = request.knowledges[0].texts
    embeddings = encode_texts(loaded.model, loaded.tokenizer, list(texts), device=loaded.device)
    source, target = class_embedding(loaded, request.source), class_embedding(loaded, request.target)
    cues = spurious_cues(request.knowledges, source, target, embeddings, neurons=request.neurons, top=request.top,
                         exclude=[request.target, request.source])
    verified = None
    names = [n.lower() for n in request.labels.names]
    if hasattr(loaded.tokenizer, "vocabulary") and request.source.lower() in SHAPES and request.target.lower() in names:
        colours = list(COLORS)
        images = [object_image(request.source.lower(), colours[i % len(colours)], 1, np.random.default_rng([77, i])).image
                  for i in range(request.verify)]
        index = names.index(request.target.lower())
        verified = {"pictures": len(images), "rates": [cue_success(loaded, images, cue.text, request.labels, index, cache=cache)
                                                       for cue in cues]}
    return {"cues": [{"text": c.text, "score": c.score, "similarity_to_target": c.similarity_to_target, "neurons": c.neurons}
                     for c in cues], "verified": verified}
