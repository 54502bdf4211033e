"""AlexNet, VGG and DenseNet backbones: declared stages, options, and torchvision parity.

Full-width VGG/AlexNet classifiers hold ~100M parameters, so tests keep inputs at the family's
minimum size, batches at one or two images, build heads on the meta device where only shapes or
loaded weights matter, and check a VGG head's values on two depths only (the head is the same
for every depth; its keys and shapes are checked on all of them).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import visionkit.models.backbones  # noqa: F401  (registers the families)
from visionkit.models.backbones.base import BackboneBuildError
from visionkit.registry import BACKBONES

VGG = ["vgg11", "vgg13", "vgg16", "vgg19"]
VGG_BN = [f"{n}_bn" for n in VGG]
DENSENET = ["densenet121", "densenet161", "densenet169", "densenet201"]
TORCHVISION = ["alexnet", *VGG, *VGG_BN, *DENSENET]  # same name in torchvision.models
REDUCED = ["alexnet_w16", "vgg11_bn_w16", "densenet_bc_k12_tiny"]
ALL = TORCHVISION + REDUCED
NO_NORM = ["alexnet", "alexnet_w16", *VGG]  # built without normalization layers
WITH_NORM = [n for n in ALL if n not in NO_NORM]
CHEAP_HEAD = ["alexnet_w16", "vgg11_bn_w16", *DENSENET, "densenet_bc_k12_tiny"]
HEAD_VALUES_CHECKED = ["alexnet", "vgg11", "vgg16_bn", *DENSENET]
NORM_KINDS = {
    "frozen_batch": FrozenBatchNorm2d,
    "group": nn.GroupNorm,
    "sync_batch": nn.SyncBatchNorm,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads cost more than they save (several times more
    when the CPU is shared), so run this module on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, so comparisons in eval mode see them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def test_all_names_registered():
    for name in ALL:
        assert name in BACKBONES


@pytest.mark.parametrize("name", ALL)
def test_stages_match_declared_specs(name):
    torch.manual_seed(0)
    net = BACKBONES.build(name).eval()
    assert list(net.feature_specs) == net.out_stages == list(net.stage_specs)
    for size in (net.min_input_size, 64):
        with torch.no_grad():
            feats = net(torch.randn(1, 3, size, size + 3))
        assert list(feats) == list(net.feature_specs)
        for stage, f in feats.items():
            spec = net.feature_specs[stage]
            assert f.shape[1] == spec.channels, stage
            for got, side in zip(f.shape[-2:], (size, size + 3)):
                assert abs(got - side // spec.stride) <= 1, (stage, got, side, spec.stride)
    strides = [s.stride for s in net.feature_specs.values()]
    assert strides == sorted(strides) and strides[-1] == 32


def test_declared_channels_of_the_reference_models():
    def specs(name):
        return [(s.channels, s.stride) for s in BACKBONES.build(name).feature_specs.values()]

    assert specs("densenet121") == [(256, 4), (512, 8), (1024, 16), (1024, 32)]
    assert specs("vgg16") == [(64, 2), (128, 4), (256, 8), (512, 16), (512, 32)]
    assert specs("vgg11_bn_w16") == [(16, 2), (32, 4), (64, 8), (128, 16), (128, 32)]
    assert specs("alexnet") == [(64, 8), (192, 16), (256, 32)]
    assert list(BACKBONES.build("vgg16").feature_specs) == [f"pool{i}" for i in range(1, 6)]
    assert list(BACKBONES.build("densenet121").feature_specs) == [
        f"denseblock{i}" for i in range(1, 5)
    ]


@pytest.mark.parametrize("name", ALL)
def test_too_small_input_names_the_minimum(name):
    net = BACKBONES.build(name).eval()
    m = net.min_input_size
    with pytest.raises(BackboneBuildError, match=f"at least {m}x{m}"):
        net(torch.randn(1, 3, m - 1, m + 10))
    net.min_input_size = 1  # the declared minimum is tight: one pixel less breaks a layer
    with pytest.raises(RuntimeError), torch.no_grad():
        net(torch.randn(1, 3, m - 1, m - 1))


@pytest.mark.parametrize("name", CHEAP_HEAD)
def test_classifier_output_shape(name):
    net = BACKBONES.build(name).eval()
    head = net.build_classifier(7).eval()
    size = max(net.min_input_size, 32)
    with torch.no_grad():
        feats = net(torch.randn(2, 3, size, size))
        assert head(feats[net.out_stages[-1]]).shape == (2, 7)


@pytest.mark.parametrize("name", ALL)
def test_one_training_step_reaches_every_stage(name):
    torch.manual_seed(0)
    net = BACKBONES.build(name).train()
    # a fixed random projection of every stage: unlike a plain mean it reaches layers that
    # end in a normalization (DenseNet's norm5), whose batch mean is constant
    size = max(net.min_input_size, 32)
    feats = net(torch.randn(2, 3, size, size))
    loss = sum((f * torch.randn_like(f)).mean() for f in feats.values())
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in net.parameters())
    changed = {k for k, p in net.named_parameters() if not torch.equal(before[k], p)}
    # every stage (and the stem) moved; single weights may not at this tiny input size, e.g.
    # a BN over two values per channel whose update rounds away next to a weight of 1.0
    for group in [net._stem, *net._stage_modules.values()]:
        if group:
            assert any(k.startswith(tuple(m + "." for m in group)) for k in changed), group


@pytest.mark.parametrize("name", ["alexnet_w16", "vgg11", "vgg11_bn_w16", "densenet_bc_k12_tiny"])
def test_frozen_stages(name):
    """Stem plus the first k stages lose requires_grad; the stem of AlexNet/VGG is empty."""
    for k in (-1, 0, 1, 2):
        net = BACKBONES.build(name, frozen_stages=k)
        frozen_paths = list(net._stem) if k >= 0 else []  # the declared modules, read back
        for stage in net.out_stages[: max(k, 0)]:
            frozen_paths += net._stage_modules[stage]
        for pname, p in net.named_parameters():
            inside = any(pname.startswith(path + ".") for path in frozen_paths)
            assert p.requires_grad == (not inside), (k, pname)
        net.train()
        for m in net.frozen_modules():  # frozen norms keep their running statistics
            assert not m.training
    net = BACKBONES.build(name, frozen_stages=len(net.out_stages))
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(BackboneBuildError, match="frozen_stages"):
        BACKBONES.build(name, frozen_stages=len(net.out_stages) + 1)


def test_frozen_parameters_by_name():
    def frozen(name, k):
        net = BACKBONES.build(name, frozen_stages=k)
        return {n for n, p in net.named_parameters() if not p.requires_grad}

    assert frozen("densenet_bc_k12_tiny", 0) == {
        "features.conv0.weight", "features.norm0.weight", "features.norm0.bias"
    }
    assert frozen("alexnet_w16", 0) == set()  # no stem
    assert frozen("alexnet_w16", 1) == {"features.0.weight", "features.0.bias"}
    assert frozen("vgg11_bn_w16", 2) == {
        f"features.{i}.{w}" for i in (0, 1, 4, 5) for w in ("weight", "bias")
    }


@pytest.mark.parametrize("name", NO_NORM)
@pytest.mark.parametrize("norm", ["frozen_batch", "group", "sync_batch"])
def test_families_without_norms_refuse_norm_options(name, norm):
    with pytest.raises(BackboneBuildError, match="no normalization layers") as err:
        BACKBONES.build(name, norm=norm)
    if name.startswith("vgg"):
        assert "_bn" in str(err.value)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11_bn", "densenet_bc_k12_tiny"])
def test_unknown_norm_is_refused(name):
    with pytest.raises(BackboneBuildError, match="unknown norm"):
        BACKBONES.build(name, norm="layer")


@pytest.mark.parametrize("name", ["vgg11_bn_w16", "densenet_bc_k12_tiny"])
@pytest.mark.parametrize("norm", list(NORM_KINDS))
def test_norm_options_replace_every_batch_norm(name, norm):
    n_bn = sum(type(m) is nn.BatchNorm2d for m in BACKBONES.build(name).modules())
    net = BACKBONES.build(name, norm=norm)
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    assert sum(isinstance(m, NORM_KINDS[norm]) for m in net.modules()) == n_bn > 0
    net.train(norm == "group")  # SyncBatchNorm trains only inside a process group
    with torch.no_grad():
        out = net(torch.randn(2, 3, 40, 40))
    assert all(torch.isfinite(f).all() for f in out.values())


# every full-size variant with norms, each under one of the options (one build each)
@pytest.mark.parametrize(
    "name, norm", [(n, list(NORM_KINDS)[i % 3]) for i, n in enumerate(WITH_NORM)]
)
def test_every_variant_with_norms_takes_a_norm_option(name, norm):
    net = BACKBONES.build(name, norm=norm)
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    assert any(isinstance(m, NORM_KINDS[norm]) for m in net.modules())


@pytest.mark.parametrize("name", ["densenet121", "vgg11_bn"])
def test_batch_norm_weights_load_into_frozen_batch_norm(name):
    """Same keys (FrozenBatchNorm2d drops num_batches_tracked) and, in eval, same outputs."""
    torch.manual_seed(0)
    ref = randomize_norms(BACKBONES.build(name)).eval()
    net = BACKBONES.build(name, norm="frozen_batch").eval()
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(ref(x).values(), net(x).values()):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("alexnet_w16", {}),
        ("vgg11", {"base_width": 16}),  # the width option works on every VGG variant
        ("vgg11_bn_w16", {}),
        ("densenet_bc_k12_tiny", {}),
    ],
)
def test_in_channels_and_out_stages(name, kwargs):
    stages = list(BACKBONES.build(name, **kwargs).feature_specs)
    net = BACKBONES.build(name, in_channels=1, out_stages=[stages[-1], stages[1]], **kwargs)
    assert list(net.feature_specs) == [stages[1], stages[-1]]  # shallow to deep, whatever order
    size = max(net.min_input_size, 32)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, size, size))
    assert list(out) == [stages[1], stages[-1]]
    assert out[stages[-1]].shape[1] == net.feature_specs[stages[-1]].channels
    with pytest.raises(BackboneBuildError, match="not available"):
        BACKBONES.build(name, out_stages=["layer4"], **kwargs)


@pytest.mark.parametrize("name", TORCHVISION)
def test_keys_shapes_and_parameter_count_equal_torchvision(name):
    with torch.device("meta"):  # shapes only: no 100M-element initialisation
        tv = getattr(torchvision.models, name)(weights=None)
        net = BACKBONES.build(name)
        head = net.build_classifier(1000)
    ours = {k: v.shape for k, v in net.state_dict().items()}
    ours.update({k: v.shape for k, v in head.state_dict().items()})
    assert ours == {k: v.shape for k, v in tv.state_dict().items()}
    assert sum(p.numel() for p in [*net.parameters(), *head.parameters()]) == sum(
        p.numel() for p in tv.parameters()
    )


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_checkpoint_loads_and_matches(name, tmp_path):
    """torchvision's state dict, through a file, loads strictly (backbone + head) and gives
    torchvision's outputs. VGG heads are identical across depths, so their ~500MB of values
    go through the file on two depths only."""
    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name.startswith("vgg") else {}  # all values are loaded
    tv = randomize_norms(getattr(torchvision.models, name)(weights=None, **kwargs)).eval()
    net = BACKBONES.build(name)
    prefixes = tuple(p + "." for p in net.classifier_prefixes)
    state = tv.state_dict()
    if name not in HEAD_VALUES_CHECKED:
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    torch.save(state, tmp_path / "tv.pth")
    state = torch.load(tmp_path / "tv.pth", weights_only=True)

    head_state = {k: v for k, v in state.items() if k.startswith(prefixes)}
    net.load_state_dict({k: v for k, v in state.items() if k not in head_state}, strict=True)
    net.eval()
    x = torch.randn(1, 3, net.min_input_size + 1, net.min_input_size + 1)
    with torch.no_grad():
        deepest = net(x)[net.out_stages[-1]]
        assert torch.allclose(deepest, tv.features(x), atol=1e-5)
        if name in HEAD_VALUES_CHECKED:
            with torch.device("meta"):  # every weight comes from the checkpoint: skip the init
                head = net.build_classifier(1000)
            head.load_state_dict(head_state, strict=True, assign=True)
            assert torch.allclose(head.eval()(deepest), tv(x), atol=1e-5)
