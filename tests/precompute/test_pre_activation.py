"""Pre-ReLU capture: ResNet layers read before their in-place ReLU, ViT layers unchanged."""

from __future__ import annotations

import torch

from precompute.capture import capture
from precompute.registry import load_model


def test_resnet_layers_are_read_before_the_final_relu():
    rn = load_model("toy-rn", "toy-rn")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    names = ["layer3", "layer4.0", "layer4", "attnpool"]
    post = capture(rn, images, names)
    pre = capture(rn, images, names, pre_activation=True)
    for name in ("layer3", "layer4"):
        torch.testing.assert_close(torch.relu(pre[name]), post[name])
    # open_clip zero-initialises bn3, so at random init only blocks with a downsample branch
    # (toy-rn's single layer4 block) see negative values before their ReLU.
    assert (pre["layer4"] < 0).any() and not (post["layer4"] < 0).any()
    torch.testing.assert_close(pre["attnpool"], post["attnpool"])  # no ReLU after it
    # Block output by hand: bn3(conv3(...)) + identity, before act3.
    visual = rn.model.visual
    with torch.inference_mode():
        x = visual.layer3(visual.layer2(visual.layer1(visual.stem(images))))
        block = visual.layer4[0]
        out = block.avgpool(block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))))
        expected = block.bn3(block.conv3(out)) + (block.downsample(x) if block.downsample is not None else x)
    torch.testing.assert_close(pre["layer4.0"], expected)


def test_vit_layers_ignore_the_option():
    vit = load_model("toy-vit", "toy-vit")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    name = "transformer.resblocks.5.mlp"
    torch.testing.assert_close(capture(vit, images, name, pre_activation=True)[name], capture(vit, images, name)[name])
