"""The second-order lens: what each neuron of a layer contributes to the image embedding.

`004_…` (Gandelsman, Efros, Steinhardt, 2024), sections 3-4 and appendix A.5. For a neuron n
of MLP layer l of a ViT tower, its output p_n(t) w_n at every token t flows through every
attention head of every later layer l' into the pooled token(s), then through the final
LayerNorm and the projection into the joint image-text space (eq. 5 and 11):

    phi_n = sum_{l' > l} sum_h sum_t [ a^{l',h}(t) p_n(t) / s^{l'}(t) ] * M^{l',h}_n  (+ shares)

Everything in brackets comes from the image's own forward pass (attention weights, the
LayerNorm scales s); M^{l',h}_n = P(gamma_post * W_O^h W_V^h (gamma^{l'} * w_n)) does not
depend on the image and is computed once per (model, layer) and reused. Only the pooled row
is ever formed: no tensor is per token x per neuron x width, and a memory budget bounds the
maps and every intermediate (neurons are processed in chunks).

The authors' conventions, which the reference numbers in `shared/reference/second-order/`
pin down: each LayerNorm's mean term and bias, and each linear layer's bias, are split evenly
over all the components that add into its input (appendix A.5: a layer l' attention input
has 1 + 2 l' components; the final LayerNorm's has 1 + 2 L; a layer's neurons, a layer's
heads share their component evenly), and effects are in logit units: x 100 / ||image
embedding before normalisation||. The shares are the same vector for every neuron of the
layer, so a layer's effects sum to its whole (linearised) contribution.

Towers:
- ViTs pooled by the class token (OpenAI's): the second-order path, as above.
- ViTs pooled by the mean of their patch tokens (toy-vit): the same path into every pooled
  token (each with its own final-LayerNorm scale), plus the direct (first-order) path through
  the residual stream; the last MLP layer, with no later heads, has only the direct path.
- ResNets (toy-rn, RN50x4): a final-stage channel's effect through the attention pool, with
  the image's own attention weights fixed. Then the pool is affine in its input and channel
  c contributes  sum_h alpha_h(c) * W_O^h W_V^h[:, c]  (a scalar per head times a fixed vector,
  the output projection of its value column). The positional embeddings and biases of the
  pool are not a channel's and are left out (they are the same for every channel).

`neuron_effects` serves every supported layer and says which paths the effects include;
`second_order_effects` is the second-order path alone, for ViT towers.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from precompute.errors import MicroscopeError

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes for the cached maps, and for each call's intermediates
LOGIT_SCALE = 100.0

SECOND_ORDER = "second-order"
SECOND_ORDER_AND_DIRECT = "second-order+direct"
DIRECT = "direct"
ATTENTION_POOL = "attention-pool"

_VIT_LAYER = re.compile(r"^(?:visual\.)?transformer\.resblocks\.(\d+)\.mlp(?:\.gelu)?$")
_RESNET_LAYER = re.compile(r"^(?:visual\.)?layer(\d+)(?:\.(\d+))?$")


class LensError(MicroscopeError):
    """A layer (or tower) the lens cannot serve."""


@dataclass(frozen=True)
class NeuronEffects:
    values: torch.Tensor  # [B, N, d] float32, logit units
    paths: str  # "second-order", "second-order+direct", "direct" or "attention-pool"


def _visual(model) -> nn.Module:
    """The vision tower of a LoadedModel, an open_clip CLIP model, or the tower itself."""
    model = getattr(model, "model", model)
    return getattr(model, "visual", model)


def _serving_error(layer, why: str = "") -> LensError:
    return LensError(
        f"the second-order lens cannot serve layer '{layer}'{': ' + why if why else ''}; it serves the MLP layers "
        "of ViT towers (transformer.resblocks.N.mlp, except the last one of a class-token tower) and the final "
        "stage of ResNet towers (layer4)"
    )


@dataclass(frozen=True)
class _Plan:
    family: str  # "vit" | "resnet"
    index: int  # MLP block index (ViT); unused for ResNets
    pooling: str  # "token" | "mean" | "attention-pool"
    paths: str


def _plan(visual: nn.Module, layer: str | int) -> _Plan:
    if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
        match = _RESNET_LAYER.match(str(layer))
        stages = sum(1 for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(visual, name))
        last_block = len(visual.layer4) - 1
        if not match or int(match.group(1)) != stages or (match.group(2) is not None and int(match.group(2)) != last_block):
            raise _serving_error(layer, "only the final stage's channels flow straight into the attention pool")
        if not isinstance(getattr(visual.attnpool, "positional_embedding", None), torch.Tensor):
            raise _serving_error(layer, "this ResNet has no attention pool")
        return _Plan("resnet", stages, "attention-pool", ATTENTION_POOL)
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        raise LensError(f"the second-order lens does not know this tower ({type(visual).__name__})")
    match = re.match(r"^\d+$", str(layer)) if isinstance(layer, int) else _VIT_LAYER.match(str(layer))
    if not match:
        raise _serving_error(layer)
    index = int(match.group(0) if isinstance(layer, int) else match.group(1))
    depth = len(transformer.resblocks)
    if not 0 <= index < depth:
        raise _serving_error(layer, f"the tower has {depth} blocks")
    if getattr(visual, "attn_pool", None) is not None:
        raise _serving_error(layer, "towers with an attentional pooler are not supported")
    pool_type = getattr(visual, "pool_type", "tok")
    for block in transformer.resblocks[index:]:
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise _serving_error(layer, "its blocks do not use plain multi-head attention")
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise _serving_error(layer, "towers with layer scale are not supported")
    if pool_type == "tok":
        if index == depth - 1:
            raise _serving_error(layer, "the last MLP of a class-token tower has no later attention heads")
        return _Plan("vit", index, "token", SECOND_ORDER)
    if pool_type == "avg":
        if getattr(visual, "final_ln_after_pool", False):
            raise _serving_error(layer, "the final LayerNorm after mean pooling is not supported")
        return _Plan("vit", index, "mean", DIRECT if index == depth - 1 else SECOND_ORDER_AND_DIRECT)
    raise _serving_error(layer, f"unsupported pooling '{pool_type}'")


def lens_paths(model, layer: str | int) -> str:
    """Which paths `neuron_effects` includes for this layer; LensError when it cannot serve it."""
    return _plan(_visual(model), layer).paths


def _chunk_size(per_neuron_bytes: int, budget: int, total: int) -> int:
    return max(1, min(total, budget // max(1, per_neuron_bytes)))


def _ln_stats(module: nn.LayerNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sqrt(var + eps) of a LayerNorm's input, per token."""
    x = x.float()
    mean = x.mean(dim=-1)
    var = (x - mean[..., None]).pow(2).mean(dim=-1)
    return mean, torch.sqrt(var + module.eps)


class _VitLens:
    """The lens of one MLP layer of one ViT tower: the image-independent maps (cached within
    the memory budget), and the per-image coefficients."""

    def __init__(self, visual: nn.Module, plan: _Plan, budget: int) -> None:
        self.visual, self.plan, self.budget = visual, plan, budget
        blocks = visual.transformer.resblocks
        self.depth = len(blocks)
        self.index = plan.index
        self.later = list(range(self.index + 1, self.depth))
        self.heads = blocks[self.index + 1].attn.num_heads if self.later else 0
        self.width = blocks[self.index].mlp.c_proj.in_features
        self.dim = blocks[self.index].mlp.c_proj.out_features
        self.direct = plan.paths in (DIRECT, SECOND_ORDER_AND_DIRECT)
        self.second = plan.paths in (SECOND_ORDER, SECOND_ORDER_AND_DIRECT)
        # j indexes the maps: (later layer, head) pairs, then the direct path.
        self.maps_count = (len(self.later) * self.heads if self.second else 0) + (1 if self.direct else 0)
        proj = visual.proj
        self.out_dim = proj.shape[1] if proj is not None else self.dim
        map_bytes = self.width * self.maps_count * self.out_dim * 4
        self.cache_maps = map_bytes <= budget // 2
        self._maps: torch.Tensor | None = None
        self._fixed: dict = {}

    # -- image-independent maps -------------------------------------------------------------------
    def _projection(self) -> torch.Tensor:
        proj = self.visual.proj
        gamma = self.visual.ln_post.weight.detach().float()
        eye = proj.detach().float() if proj is not None else torch.eye(self.dim, device=gamma.device)
        return gamma[:, None] * eye  # [D, d]: the final LayerNorm's scale, then the projection

    def maps(self, begin: int, end: int) -> torch.Tensor:
        """[end - begin, J, d]: neuron n's fixed vector for every (later layer, head), and for the
        direct path last (each to be scaled by the image's coefficient)."""
        if self.cache_maps:
            if self._maps is None:
                step = _chunk_size(self.maps_count * self.out_dim * 4 * 3, self.budget // 2, self.width)
                self._maps = torch.cat([self._compute_maps(b, min(self.width, b + step))
                                        for b in range(0, self.width, step)])
            return self._maps[begin:end]
        return self._compute_maps(begin, end)

    def _compute_maps(self, begin: int, end: int) -> torch.Tensor:
        blocks = self.visual.transformer.resblocks
        w_out = blocks[self.index].mlp.c_proj.weight.detach().float()[:, begin:end].T  # [n, D]
        post = self._projection()  # [D, d]
        parts = []
        if self.second:
            for later in self.later:
                attn = blocks[later].attn
                heads, head_dim = attn.num_heads, attn.head_dim
                gamma = blocks[later].ln_1.weight.detach().float()
                w_v = attn.in_proj_weight.detach().float()[2 * self.dim:]  # [D(out), D(in)]
                values = (w_out * gamma) @ w_v.T  # [n, D] = all heads' value vectors
                w_o = attn.out_proj.weight.detach().float()  # [D, D]
                # U_h = W_O^h^T (gamma_post) P: [H, dh, d]
                u = (w_o.T @ post).reshape(heads, head_dim, -1)
                parts.append(torch.einsum("nhe,hed->nhd", values.reshape(-1, heads, head_dim), u))
        if self.direct:
            parts.append((w_out @ post)[:, None, :])
        return torch.cat(parts, dim=1).contiguous()

    # -- one batch --------------------------------------------------------------------------------
    def hooks(self, record: dict) -> list:
        """Forward hooks that keep, in `record`, what this layer's effects need of a forward pass:
        the layer's activations, the later attention inputs and the final LayerNorm's statistics.
        `record` is shared by every lens of one forward pass: a module is hooked once."""
        visual = self.visual
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        hooked = record.setdefault("hooked", set())
        record.setdefault("p", {})
        record.setdefault("ln_1", {})

        def tokens_first(x: torch.Tensor) -> torch.Tensor:
            return x if batch_first else x.transpose(0, 1)

        def on_gelu(index):
            def hook(_m, _i, output):
                record["p"][index] = tokens_first(output).float()
            return hook

        def on_ln_1(index):
            def hook(module, inputs, output):
                record["ln_1"][index] = (_ln_stats(module, tokens_first(inputs[0])), tokens_first(output).float())
            return hook

        def on_ln_post(module, inputs, _output):
            record["post"] = _ln_stats(module, inputs[0])

        wanted = [(("p", self.index), blocks[self.index].mlp.gelu, on_gelu(self.index)),
                  (("post",), visual.ln_post, on_ln_post)]
        if self.second:
            wanted += [(("ln_1", later), blocks[later].ln_1, on_ln_1(later)) for later in self.later]
        handles = []
        for key, module, hook in wanted:
            if key not in hooked:
                hooked.add(key)
                handles.append(module.register_forward_hook(hook))
        return handles

    def _value_vectors(self, later: int) -> torch.Tensor:
        """[3, H, dh]: the value vectors (all heads) of gamma_1 * (c / N), gamma_1, and beta_1 + the
        value bias -- what the biases and LayerNorm means of a neuron's share turn into."""
        key = ("values", later)
        if key not in self._fixed:
            blocks = self.visual.transformer.resblocks
            block, dim = blocks[later], self.dim
            attn = block.attn
            w_v = attn.in_proj_weight.detach().float()[2 * dim:]
            b_v = attn.in_proj_bias.detach().float()[2 * dim:] if attn.in_proj_bias is not None else 0.0
            gamma_1, beta_1 = block.ln_1.weight.detach().float(), block.ln_1.bias.detach().float()
            c_bias = blocks[self.index].mlp.c_proj.bias.detach().float() / self.width
            vectors = torch.stack([w_v @ (gamma_1 * c_bias), w_v @ gamma_1, w_v @ beta_1 + b_v])
            self._fixed[key] = vectors.reshape(3, attn.num_heads, attn.head_dim)
        return self._fixed[key]

    def _queries(self, tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled tokens and their weights in the pooled embedding."""
        if self.plan.pooling == "token":
            return torch.tensor([0], device=device), torch.ones(1, device=device)
        return torch.arange(1, tokens, device=device), torch.full((tokens - 1,), 1.0 / (tokens - 1), device=device)

    def _attention(self, block: nn.Module, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """[B, H, Q, T] attention weights of the pooled queries, from the block's own input."""
        attn = block.attn
        heads, head_dim, dim = attn.num_heads, attn.head_dim, self.dim
        weight = attn.in_proj_weight.detach().float()
        bias = attn.in_proj_bias.detach().float() if attn.in_proj_bias is not None else torch.zeros(3 * dim, device=y.device)
        q = (y[:, queries] @ weight[:dim].T + bias[:dim]).reshape(y.shape[0], -1, heads, head_dim)
        k = (y @ weight[dim:2 * dim].T + bias[dim:2 * dim]).reshape(y.shape[0], -1, heads, head_dim)
        scores = torch.einsum("bqhe,bthe->bhqt", q, k) / math.sqrt(head_dim)
        return scores.softmax(dim=-1)

    def compute(self, record: dict, rep: torch.Tensor) -> torch.Tensor:
        """The effects [B, N, d] from what the hooks kept and the embedding `rep`."""
        p = record["p"][self.index]  # [B, T, N]
        batch, tokens, _ = p.shape
        device = p.device
        post_mean, post_std = record["post"]  # [B, T] (or [B] after pooling)
        queries, weights = self._queries(tokens, device)
        if post_std.dim() == 1:  # final LayerNorm after pooling (class token): one scale
            post_mean, post_std = post_mean[:, None].expand(-1, tokens), post_std[:, None].expand(-1, tokens)
        qmean, qstd = post_mean[:, queries], post_std[:, queries]  # [B, Q]
        pooled = weights / qstd  # [B, Q]: each pooled token's weight over its final-LN scale
        blocks = self.visual.transformer.resblocks
        components = 1 + 2 * self.depth  # what adds into the final LayerNorm's input
        n_neurons, dim = self.width, self.dim
        gamma_post = self.visual.ln_post.weight.detach().float()
        beta_post = self.visual.ln_post.bias.detach().float()
        c_bias = blocks[self.index].mlp.c_proj.bias.detach().float() / n_neurons  # each neuron's share
        pooled_sum = pooled.sum(dim=1)  # [B]
        pooled_mean = (pooled * qmean).sum(dim=1)  # [B]

        coefficients = []  # [B, ., T] per map j
        # One neuron's share of the biases and LayerNorm means, at the final LayerNorm's output
        # (pooled over the queries), before the projection. Every share is a per-image scalar
        # times a fixed vector, so it is summed as such, never per token.
        share = torch.zeros(batch, dim, device=device)
        if self.second:
            for later in self.later:
                block = blocks[later]
                (mean_1, std_1), y = record["ln_1"][later]  # [B, T], [B, T], [B, T, D]
                shared_key = ("pooled attention", later, self.plan.pooling)
                if shared_key not in record:  # the same for every earlier layer's lens
                    a = self._attention(block, y, queries)  # [B, H, Q, T]
                    alpha = torch.einsum("bq,bhqt->bht", pooled, a)  # [B, H, T]
                    record[shared_key] = (alpha, alpha / std_1[:, None, :], torch.stack([
                        torch.einsum("bht,bt->bh", alpha, 1 / std_1), torch.einsum("bht,bt->bh", alpha, mean_1 / std_1),
                        alpha.sum(dim=-1)]))
                alpha, scaled, sums = record[shared_key]
                # coefficient of neuron n: sum_q w_q/s_post(q) sum_t a(q, t) p_n(t) / s_1(t)
                coefficients.append(scaled)
                parts = 1 + 2 * later  # components adding into this layer's attention input
                attn = block.attn
                heads, head_dim = attn.num_heads, attn.head_dim
                w_o = attn.out_proj.weight.detach().float()
                b_o = attn.out_proj.bias.detach().float() if attn.out_proj.bias is not None else torch.zeros(dim, device=device)
                # the neuron's input at token t:  gamma_1 (c/N) / s_1(t) - gamma_1 mu_1(t) / (K N s_1(t)) + beta_1 / (K N)
                # and the value bias b_v / (K N): three fixed value vectors, each times a pooled sum of attention
                values = self._value_vectors(later)  # [3, H, dh]
                weights_3 = sums * torch.tensor([1.0, -1.0 / (parts * n_neurons), 1.0 / (parts * n_neurons)],
                                                device=device)[:, None, None]  # [3, B, H]
                pooled_values = torch.einsum("kbh,khe->bhe", weights_3, values)  # [B, H, dh]
                out = torch.einsum("bhe,dhe->bd", pooled_values, w_o.reshape(dim, heads, head_dim))
                out = out + pooled_sum[:, None] * b_o / (parts * n_neurons)  # the H heads' shares of the output bias
                spread = parts * components * n_neurons  # (H heads together)
                share += gamma_post * (out - pooled_mean[:, None] / spread) + beta_post / spread
        if self.direct:
            direct = torch.zeros(batch, tokens, device=device)
            direct[:, queries] = pooled
            coefficients.append(direct[:, None, :])
            spread = components * n_neurons
            share += gamma_post * (pooled_sum[:, None] * c_bias - pooled_mean[:, None] / spread) + beta_post / spread
        alpha = torch.cat(coefficients, dim=1)  # [B, J, T]
        proj = self.visual.proj
        share = share @ proj.detach().float() if proj is not None else share

        scale = LOGIT_SCALE / rep.float().norm(dim=-1)  # [B]
        out = torch.empty(batch, n_neurons, self.out_dim, device=device)
        maps_count = alpha.shape[1]
        per_neuron = maps_count * self.out_dim * 4 * (0 if self.cache_maps else 3) + batch * (maps_count + self.out_dim) * 4 * 2
        step = _chunk_size(per_neuron, self.budget // 2, n_neurons)
        for begin in range(0, n_neurons, step):
            end = min(n_neurons, begin + step)
            coeff = torch.einsum("bjt,btn->njb", alpha, p[:, :, begin:end])  # [n, J, B]
            maps = self.maps(begin, end)  # [n, J, d]
            chunk = torch.bmm(coeff.transpose(1, 2), maps)  # [n, B, d]
            out[:, begin:end] = (chunk.transpose(0, 1) + share[:, None, :]) * scale[:, None, None]
        return out


class _ResNetLens:
    """A final-stage channel's effect through the attention pool, attention weights fixed."""

    def __init__(self, visual: nn.Module, plan: _Plan, budget: int) -> None:
        self.visual, self.plan, self.budget = visual, plan, budget
        pool = visual.attnpool
        self.heads = pool.num_heads
        self.channels = pool.v_proj.in_features
        self.out_dim = pool.c_proj.out_features
        self.cache_maps = self.heads * self.channels * self.out_dim * 4 <= budget // 2
        self._maps: torch.Tensor | None = None

    def maps(self, begin: int, end: int) -> torch.Tensor:
        """[end - begin, H, d]: channel c's value column through head h's output projection."""
        if self.cache_maps:
            if self._maps is None:
                self._maps = self._compute_maps(0, self.channels)
            return self._maps[begin:end]
        return self._compute_maps(begin, end)

    def _compute_maps(self, begin: int, end: int) -> torch.Tensor:
        pool = self.visual.attnpool
        head_dim = self.channels // self.heads
        w_v = pool.v_proj.weight.detach().float()[:, begin:end].reshape(self.heads, head_dim, end - begin)
        w_o = pool.c_proj.weight.detach().float().reshape(self.out_dim, self.heads, head_dim)
        return torch.einsum("hec,ohe->cho", w_v, w_o).contiguous()

    def hooks(self, record: dict) -> list:
        def on_pool(_m, inputs):
            record["x"] = inputs[0].float()

        return [self.visual.attnpool.register_forward_pre_hook(on_pool)]

    def compute(self, record: dict, rep: torch.Tensor) -> torch.Tensor:
        pool = self.visual.attnpool
        x = record["x"]
        batch = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # the mean token first, as the pool does
        positioned = tokens + pool.positional_embedding.detach().float()[None]
        head_dim = self.channels // self.heads
        q = F.linear(positioned[:, :1], pool.q_proj.weight.float(), pool.q_proj.bias.float())
        k = F.linear(positioned, pool.k_proj.weight.float(), pool.k_proj.bias.float())
        q = q.reshape(batch, 1, self.heads, head_dim)
        k = k.reshape(batch, -1, self.heads, head_dim)
        a = (torch.einsum("bqhe,bthe->bht", q, k) / math.sqrt(head_dim)).softmax(dim=-1)  # [B, H, T]
        alpha = torch.einsum("bht,btc->cbh", a, tokens)  # [C, B, H]: each channel's attention-weighted value
        scale = LOGIT_SCALE / rep.float().norm(dim=-1)
        out = torch.empty(batch, self.channels, self.out_dim, device=x.device)
        per_channel = self.heads * self.out_dim * 4 * (0 if self.cache_maps else 2) + batch * self.out_dim * 4
        step = _chunk_size(per_channel, self.budget // 2, self.channels)
        for begin in range(0, self.channels, step):
            end = min(self.channels, begin + step)
            out[:, begin:end] = torch.bmm(alpha[begin:end], self.maps(begin, end)).transpose(0, 1) * scale[:, None, None]
        return out


_LENSES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def lens_for(model, layer: str | int, *, memory_budget: int = DEFAULT_MEMORY_BUDGET, paths: str | None = None):
    """The (cached) lens of a layer: its maps are computed once per (tower, layer, budget).
    The tower's weights must not change while it is cached."""
    visual = _visual(model)
    plan = _plan(visual, layer)
    if paths is not None and paths != plan.paths:
        plan = _Plan(plan.family, plan.index, plan.pooling, paths)
    key = (plan.family, plan.index, plan.paths, int(memory_budget))
    lenses = _LENSES.setdefault(visual, {})
    if key not in lenses:
        lenses[key] = (_ResNetLens if plan.family == "resnet" else _VitLens)(visual, plan, int(memory_budget))
    return lenses[key]


def _run(lenses: list, visual: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """One forward pass of the tower serves every lens: each keeps what it needs through hooks."""
    parameter = next(visual.parameters())
    was_training = visual.training
    visual.eval()  # BatchNorm must use its running statistics
    record: dict = {}  # what the forward pass leaves for the lenses, shared by them
    handles = [handle for lens in lenses for handle in lens.hooks(record)]
    try:
        with torch.inference_mode():
            rep = visual(images.to(device=parameter.device, dtype=parameter.dtype))
            return [lens.compute(record, rep) for lens in lenses]
    finally:
        for handle in handles:
            handle.remove()
        visual.train(was_training)


def layer_effects(model, images: torch.Tensor, layers, *,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, NeuronEffects]:
    """`neuron_effects` of several layers from one forward pass, by layer name."""
    names = list(dict.fromkeys(layers))
    lenses = [lens_for(model, layer, memory_budget=memory_budget) for layer in names]
    values = _run(lenses, _visual(model), images)
    return {str(name): NeuronEffects(value, lens.plan.paths) for name, lens, value in zip(names, lenses, values)}


def neuron_effects(model, images: torch.Tensor, layer: str | int, *,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> NeuronEffects:
    """Every unit's effect on the image embedding, [B, N, d] in logit units, with the paths it
    includes (see the module docstring). LensError for a layer the lens cannot serve."""
    return layer_effects(model, images, [layer], memory_budget=memory_budget)[str(layer)]


def second_order_effects(model, images: torch.Tensor, layer: str | int, *,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """The second-order effect of every neuron of a ViT MLP layer, [B, N, d]: its contribution
    through every attention head of every later layer to the image embedding (authors'
    conventions; see the module docstring)."""
    visual = _visual(model)
    plan = _plan(visual, layer)
    if plan.family != "vit" or plan.paths == DIRECT:
        raise _serving_error(layer, "it has no second-order path")
    lens = lens_for(model, layer, memory_budget=memory_budget, paths=SECOND_ORDER)
    return _run([lens], visual, images)[0]
