"""Dataset examples and activation statistics of every unit, in one streaming pass.

What a unit's activation on an image is: its spatial maximum over the layer's map (patch
tokens for ViTs, the class token left out) with the position of that maximum, or the value
itself for pooled layers. ResNet layers are read *before* their final ReLU
(`capture(..., pre_activation=True)`) so that inhibition shows: the Distill article ranks
on pre-ReLU activations. ViT MLP neurons are post-GELU, which already has negative values.
The same per-image value is ranked both ways: the top-k images are those where the unit
fires hardest somewhere, the bottom-k those where even its strongest response is the most
negative (the unit is inhibited everywhere in the image); statistics, histogram and buckets
describe that value too.

`LayerAccumulator` holds, for every unit of one layer, state that merges exactly:

- top-k and bottom-k images: `torch.topk` over unique int64 keys (`precompute.keys`) that
  order by activation and break ties by dataset position. A merge of two accumulators is
  exactly the top-k of the union, whatever the order of batches and shards.
- count, mean and M2 for mean and (population) standard deviation, merged with Chan et
  al.'s parallel formulas in float64; min and max; the count of images with activation > 0
  (`fraction_active`, i.e. the unit fires after its ReLU).
- a histogram on FIXED bins: `hist_bins` uniform bins over a per-unit range decided before
  the pass from a calibration batch (the first batch of the dataset, see `calibrated_range`:
  its min..max widened by its width on each side), plus an underflow and an overflow count.
  Because every shard uses the same edges, shard histograms add exactly.
- the conditional-probability reservoirs of `precompute.buckets` on the same range.

All tensors stay on the capture device and every update is a handful of vectorised ops
per layer (no per-unit Python), so the pass runs at close to the bare forward speed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from precompute import keys as K
from precompute.buckets import empty_reservoir, reservoir_merge, reservoir_update, select_buckets
from precompute.capture import capture, unit_maxima
from precompute.errors import MicroscopeError
from precompute.registry import LoadedModel

STATE_VERSION = 1


@dataclass(frozen=True)
class ExampleParams:
    k: int = 64  # top-k and bottom-k images per unit
    hist_bins: int = 128  # histogram bins inside the fixed range (plus underflow, overflow)
    sample_bins: int = 32  # fine reservoir bins for the conditional-probability samples
    buckets: int = 10  # uniform activation buckets between each unit's min and max
    per_bucket: int = 8  # images sampled per bucket

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise MicroscopeError(f"{name} must be a positive integer, got {value!r}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def ranking_values(
    loaded: LoadedModel, images: torch.Tensor, layers: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer: (batch, units) float32 activations as ranked (spatial max, pre-ReLU where the
    architecture has it) and the flat position of each maximum (None for pooled layers)."""
    captured = capture(loaded, images, layers, pre_activation=True)
    out = {}
    for name, activation in captured.items():
        values, positions = unit_maxima(activation, loaded.spec.layer(name))
        out[name] = (values.float(), positions)
    return out


def calibrated_range(values: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed per-unit range of the histogram and sample bins, from a calibration batch of
    (batch, units) values: [min - w, max + w] with w the batch's width (or a small positive
    width where the batch saw a single value). Values outside still count (underflow and
    overflow bins) and the exact min and max are tracked separately."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = array.astype(np.float32)
    low, high = array.min(axis=0), array.max(axis=0)
    width = high - low
    fallback = np.maximum(np.abs(low), np.float32(1e-3))
    width = np.where(width > 0, width, fallback).astype(np.float32)
    return (low - width).astype(np.float32), (high + width).astype(np.float32)


def _bin_index(values: torch.Tensor, low: torch.Tensor, scale: torch.Tensor, bins: int) -> torch.Tensor:
    """(batch, units) -> bin in [0, bins + 1]: 0 underflow, 1..bins inside, bins + 1 overflow."""
    scaled = torch.floor((values - low) * scale)
    return scaled.clamp_(-1, bins).to(torch.int64).add_(1)


@dataclass
class LayerResults:
    """Finished numbers of one layer, numpy, one row per unit."""

    count: int
    skipped: int
    top_values: np.ndarray  # (units, n) float32, n = min(k, count)
    top_positions: np.ndarray  # (units, n) int64 dataset positions
    top_args: np.ndarray | None  # (units, n) int64 flat spatial argmax, None for pooled layers
    bottom_values: np.ndarray
    bottom_positions: np.ndarray
    bottom_args: np.ndarray | None
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    fraction_active: np.ndarray
    hist_low: np.ndarray  # (units,) lower edge of the first inside bin
    hist_high: np.ndarray
    hist_counts: np.ndarray  # (units, hist_bins + 2): underflow, bins..., overflow
    bucket_edges: np.ndarray  # (units, buckets + 1)
    bucket_positions: np.ndarray  # (units, buckets, per_bucket) int64, -1 for empty slots
    bucket_values: np.ndarray

    def histogram(self, unit: int) -> dict:
        counts = self.hist_counts[unit]
        bins = counts.shape[0] - 2
        low, high = float(self.hist_low[unit]), float(self.hist_high[unit])
        edges = np.linspace(low, high, bins + 1, dtype=np.float64)
        return {
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts[1:-1]],
            "underflow": int(counts[0]),
            "overflow": int(counts[-1]),
            "count": int(self.count),
        }


class LayerAccumulator:
    """Exactly mergeable per-unit state of one layer over a set of images (see module doc)."""

    def __init__(
        self,
        units: int,
        params: ExampleParams,
        low: np.ndarray,
        high: np.ndarray,
        spatial: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        self.units = int(units)
        self.params = params
        self.spatial = bool(spatial)
        self.device = torch.device(device)
        low = np.asarray(low, dtype=np.float32)
        high = np.asarray(high, dtype=np.float32)
        if low.shape != (self.units,) or high.shape != (self.units,) or not np.all(high > low):
            raise ValueError("the fixed range needs low < high for every unit")
        self.low = torch.from_numpy(low.copy()).to(self.device)
        self.high = torch.from_numpy(high.copy()).to(self.device)
        width = self.high - self.low
        self._hist_scale = params.hist_bins / width
        self._sample_scale = params.sample_bins / width
        u, k = self.units, params.k
        self.top = torch.full((u, k), K.TOP_EMPTY, dtype=torch.int64, device=self.device)
        self.bottom = torch.full((u, k), K.BOTTOM_EMPTY, dtype=torch.int64, device=self.device)
        self.top_args = torch.full((u, k), -1, dtype=torch.int64, device=self.device)
        self.bottom_args = torch.full((u, k), -1, dtype=torch.int64, device=self.device)
        self.count = 0
        self.skipped = 0
        self.mean = torch.zeros(u, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(u, dtype=torch.float64, device=self.device)
        self.vmin = torch.full((u,), math.inf, dtype=torch.float32, device=self.device)
        self.vmax = torch.full((u,), -math.inf, dtype=torch.float32, device=self.device)
        self.active = torch.zeros(u, dtype=torch.int64, device=self.device)
        self.hist = torch.zeros((u, params.hist_bins + 2), dtype=torch.int64, device=self.device)
        self.res_keys, self.res_values = empty_reservoir(u, params.sample_bins + 2, params.per_bucket, self.device)
        self._unit_offsets_hist = torch.arange(u, device=self.device) * (params.hist_bins + 2)

    # -- streaming -----------------------------------------------------------------------
    def update(
        self,
        values: torch.Tensor,
        args: torch.Tensor | None,
        positions: torch.Tensor,
        sample_keys: torch.Tensor,
    ) -> None:
        """Add a batch: values (batch, units) float32, args (batch, units) flat argmax or None,
        positions (batch,) dataset positions, sample_keys (batch,) from `keys.sample_keys`."""
        batch = values.shape[0]
        if batch == 0:
            return
        if values.shape[1] != self.units:
            raise ValueError(f"expected {self.units} units, got {values.shape[1]}")
        values = values.to(self.device, torch.float32)
        positions = positions.to(self.device, torch.int64)
        sample_keys = sample_keys.to(self.device, torch.int64)
        columns = values.t()
        k = self.params.k

        ordered = K.float_order(columns) << K.POSITION_BITS  # shared by both key kinds
        row = positions.view(1, -1)
        candidates = torch.cat([self.top, ordered | (K.POSITION_MASK - row)], dim=1)
        self.top, top_index = candidates.topk(k, dim=1)
        candidates = torch.cat([self.bottom, ordered | row], dim=1)
        self.bottom, bottom_index = candidates.topk(k, dim=1, largest=False)
        if self.spatial:
            batch_args = args.to(self.device, torch.int64).t()
            self.top_args = torch.cat([self.top_args, batch_args], dim=1).gather(1, top_index)
            self.bottom_args = torch.cat([self.bottom_args, batch_args], dim=1).gather(1, bottom_index)

        wide = values.to(torch.float64)
        batch_mean = wide.mean(dim=0)
        batch_m2 = (wide - batch_mean).square_().sum(dim=0)
        self._merge_moments(batch, batch_mean, batch_m2)
        self.vmin = torch.minimum(self.vmin, values.amin(dim=0))
        self.vmax = torch.maximum(self.vmax, values.amax(dim=0))
        self.active += (values > 0).sum(dim=0)

        bins = _bin_index(values, self.low, self._hist_scale, self.params.hist_bins)
        flat = (bins + self._unit_offsets_hist).view(-1)
        self.hist += torch.bincount(flat, minlength=self.hist.numel()).view_as(self.hist)
        sample_bins = _bin_index(values, self.low, self._sample_scale, self.params.sample_bins)
        reservoir_update(self.res_keys, self.res_values, sample_bins, sample_keys, values)

    def _merge_moments(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    # -- merging ---------------------------------------------------------------------------
    def _check_compatible(self, other: LayerAccumulator) -> None:
        if (other.units, other.params, other.spatial) != (self.units, self.params, self.spatial):
            raise ValueError("accumulators of different layers or parameters cannot merge")
        if not (torch.equal(self.low, other.low.to(self.device)) and torch.equal(self.high, other.high.to(self.device))):
            raise ValueError("accumulators with different fixed bins cannot merge exactly")

    def merge(self, other: LayerAccumulator) -> LayerAccumulator:
        """Absorb `other` (state over a disjoint set of images), in place; returns self."""
        self._check_compatible(other)
        k = self.params.k
        o = {name: getattr(other, name).to(self.device) for name in ("top", "bottom", "top_args", "bottom_args")}
        candidates = torch.cat([self.top, o["top"]], dim=1)
        self.top, index = candidates.topk(k, dim=1)
        self.top_args = torch.cat([self.top_args, o["top_args"]], dim=1).gather(1, index)
        candidates = torch.cat([self.bottom, o["bottom"]], dim=1)
        self.bottom, index = candidates.topk(k, dim=1, largest=False)
        self.bottom_args = torch.cat([self.bottom_args, o["bottom_args"]], dim=1).gather(1, index)
        self._merge_moments(other.count, other.mean.to(self.device), other.m2.to(self.device))
        self.vmin = torch.minimum(self.vmin, other.vmin.to(self.device))
        self.vmax = torch.maximum(self.vmax, other.vmax.to(self.device))
        self.active += other.active.to(self.device)
        self.hist += other.hist.to(self.device)
        self.res_keys, self.res_values = reservoir_merge(
            self.res_keys, self.res_values, other.res_keys.to(self.device), other.res_values.to(self.device)
        )
        self.skipped += other.skipped
        return self

    # -- persistence -----------------------------------------------------------------------
    _ARRAYS = ("low", "high", "top", "bottom", "top_args", "bottom_args", "mean", "m2", "vmin", "vmax",
               "active", "hist", "res_keys", "res_values")

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, metadata) that `from_state` turns back into an identical accumulator."""
        arrays = {name: getattr(self, name).detach().cpu().numpy() for name in self._ARRAYS}
        meta = {
            "version": STATE_VERSION,
            "units": self.units,
            "spatial": self.spatial,
            "params": self.params.as_dict(),
            "count": self.count,
            "skipped": self.skipped,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict, device: torch.device | str = "cpu") -> LayerAccumulator:
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"accumulator state version {meta.get('version')} is not {STATE_VERSION}")
        acc = cls(meta["units"], ExampleParams(**meta["params"]), arrays["low"], arrays["high"], meta["spatial"], device)
        for name in cls._ARRAYS:
            setattr(acc, name, torch.from_numpy(np.array(arrays[name], copy=True)).to(acc.device))
        acc.count = int(meta["count"])
        acc.skipped = int(meta["skipped"])
        return acc

    # -- results -----------------------------------------------------------------------------
    def results(self, sample_key_of: np.ndarray) -> LayerResults:
        """Final numbers. `sample_key_of[position]` is the sampling key of the image at each
        dataset position (the same keys fed to `update`)."""
        n = min(self.params.k, self.count)
        top_values, top_positions, _ = (t.cpu().numpy() for t in K.decode_top(self.top[:, :n]))
        bottom_values, bottom_positions, _ = (t.cpu().numpy() for t in K.decode_bottom(self.bottom[:, :n]))
        count = max(self.count, 1)
        mean = self.mean.cpu().numpy()
        std = np.sqrt(np.maximum(self.m2.cpu().numpy() / count, 0.0))
        if self.count == 0:
            mean = np.full(self.units, np.nan)
            std = np.full(self.units, np.nan)
        vmin = self.vmin.cpu().numpy()
        vmax = self.vmax.cpu().numpy()

        sample_key_of = np.asarray(sample_key_of, dtype=np.int64)
        res_keys = self.res_keys.cpu().numpy().reshape(self.units, -1)
        res_values = self.res_values.cpu().numpy().reshape(self.units, -1)
        cand_keys = np.concatenate([res_keys, sample_key_of[top_positions], sample_key_of[bottom_positions]], axis=1)
        cand_values = np.concatenate([res_values, top_values, bottom_values], axis=1)
        edges, bucket_keys, bucket_values, _ = select_buckets(
            vmin, vmax, cand_keys, cand_values, self.params.buckets, self.params.per_bucket
        )
        empty = bucket_keys == K.SAMPLE_EMPTY
        bucket_positions = np.where(empty, -1, bucket_keys & K.POSITION_MASK)
        return LayerResults(
            count=self.count,
            skipped=self.skipped,
            top_values=top_values,
            top_positions=top_positions,
            top_args=self.top_args[:, :n].cpu().numpy() if self.spatial else None,
            bottom_values=bottom_values,
            bottom_positions=bottom_positions,
            bottom_args=self.bottom_args[:, :n].cpu().numpy() if self.spatial else None,
            mean=mean,
            std=std,
            min=vmin,
            max=vmax,
            fraction_active=self.active.cpu().numpy() / count,
            hist_low=self.low.cpu().numpy(),
            hist_high=self.high.cpu().numpy(),
            hist_counts=self.hist.cpu().numpy(),
            bucket_edges=edges,
            bucket_positions=bucket_positions,
            bucket_values=bucket_values,
        )


def merge_all(accumulators: list[LayerAccumulator]) -> LayerAccumulator:
    """Merge shard accumulators in the given order (fixed order: identical float moments)."""
    if not accumulators:
        raise ValueError("nothing to merge")
    first = accumulators[0]
    merged = LayerAccumulator(first.units, first.params, first.low.cpu().numpy(), first.high.cpu().numpy(),
                              first.spatial, first.device)
    for acc in accumulators:
        merged.merge(acc)
    return merged
