"""Feature visualization: images optimised to excite units, many units per optimisation.

In the spirit of Lucid/Lucent, four small pieces that compose:

- `param`: how an image is parameterised (a 1/f-scaled Fourier spectrum with colour
  decorrelation and a sigmoid, the default; or plain pixels), and the model's own input
  normalisation (from its preprocessing record, never ImageNet's constants);
- `transform`: transformation robustness (Lucid's pad / jitter / scale / rotate / jitter,
  scaled to the model's input size), drawn per image;
- `objectives`: channel, neuron, direction, diversity and the faceted objective, which add
  and scale like numbers and give one value per image of a batch;
- `render`: the optimisation itself, batched: one image per (unit, kind, variant) in one
  batch, each driven only by its own objective, with a redirected ReLU for the first steps.

`facets` trains the linear probes of faceted feature visualization and renders the toy
world's built-in facets (`text`, `object`).
"""

from precompute.featureviz.objectives import Objective, channel, diversity, direction, faceted, neuron
from precompute.featureviz.param import ImageParam, Normalise, fourier_image, pixel_image
from precompute.featureviz.render import RenderItem, RenderResult, RenderSettings, lower_layer, render

__all__ = [
    "ImageParam", "Normalise", "Objective", "RenderItem", "RenderResult", "RenderSettings", "channel", "direction",
    "diversity", "faceted", "fourier_image", "lower_layer", "neuron", "pixel_image", "render",
]
