"""Every registered backbone against the Backbone contract; ResNet/LeNet specifics; weights.

For every name in ``BACKBONES``: declared channels and strides, the classifier's output, the
minimum input size (on the meta device, where building and running cost nothing) and, for
torchvision namesakes, equal parameter counts, a strict load of torchvision's state dict through
:func:`load_backbone_weights` and identical outputs. The option tests (training step,
``out_stages``/``frozen_stages``, norms) run on every backbone under 12M parameters plus
reduced-width builds of the block types only big models have, to stay fast on a CPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import visionkit.models.backbones  # noqa: F401  (registers the families)
from visionkit.errors import CheckpointError
from visionkit.models.backbones.base import BackboneBuildError
from visionkit.models.weights import load_backbone_weights, map_torchvision_keys
from visionkit.registry import BACKBONES

NAMES = BACKBONES.names()
TORCHVISION = [n for n in NAMES if n in set(torchvision.models.list_models())]
SMALL = 12_000_000  # parameters; larger models skip the option tests (see option_cases)
#: torchvision builder options giving the model our default build is: GoogLeNet without its
#: auxiliary classifiers (ours builds them only on request; its weights are all loaded below)
REFERENCE_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": False}}


class Classifier(nn.Module):
    """The classification model's layout: ``backbone`` + ``head`` over the deepest stage."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = backbone.build_classifier(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(list(self.backbone(x).values())[-1])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run thousands of tiny ops, where a second thread saves little; on a busy
    machine OpenMP's barriers then wait for descheduled threads (measured: resnet152 at 64 px
    took 6 s with 2 threads beside one other busy process, 0.1 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def size_of(backbone) -> int:
    return max(64, backbone.min_input_size)


@functools.cache
def default_meta(name: str):
    """The default build on the meta device: shapes and counts without allocating or initialising."""
    with torch.device("meta"):
        return BACKBONES.build(name)


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- the contract, for every backbone ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_stages_match_declared_specs(name):
    """Channels as declared; strides exactly: widening the input by the deepest stride D widens
    a stage of stride s by exactly D / s pixels, whatever the padding of the layers. Shapes are
    computed on the meta device (values are checked by the parity and training tests)."""
    net = default_meta(name).eval()
    assert list(net.feature_specs) == net.out_stages == list(net.stage_specs)
    deepest = max(s.stride for s in net.feature_specs.values())
    h = size_of(net)
    feats = net(torch.zeros(1, 3, h, h + deepest, device="meta"))
    assert list(feats) == list(net.feature_specs)
    for stage, f in feats.items():
        spec = net.feature_specs[stage]
        assert f.shape[1] == spec.channels, stage
        assert f.shape[-1] - f.shape[-2] == deepest // spec.stride, (stage, tuple(f.shape), spec)
        assert abs(f.shape[-2] - h / spec.stride) < h / spec.stride / 2 + 1, (stage, tuple(f.shape))
    strides = [s.stride for s in net.feature_specs.values()]
    assert strides == sorted(strides)
    with torch.device("meta"):
        head = net.build_classifier(7)
    assert head(feats[net.out_stages[-1]]).shape == (1, 7)


@pytest.mark.parametrize("name", NAMES)
def test_too_small_input_names_the_minimum(name):
    net = default_meta(name)
    if net.min_input_size <= 1:
        pytest.skip("accepts any size")
    small = net.min_input_size - 1
    with pytest.raises(BackboneBuildError, match=str(net.min_input_size)):
        net(torch.zeros(1, 3, small, small, device="meta"))


@pytest.mark.parametrize("name", TORCHVISION)
def test_parameter_count_equals_torchvision(name):
    with torch.device("meta"):
        reference = torchvision.models.get_model(name, weights=None, **REFERENCE_OPTIONS.get(name, {}))
        head = default_meta(name).build_classifier(1000)
    assert n_params(default_meta(name), head) == n_params(reference)


# -- options and training, on every small backbone --------------------------------------------------
def option_cases() -> list:
    """Every backbone whose parameters (with a 5-class head) stay under SMALL, plus reduced-width
    builds of the block types only big models have (bottleneck, grouped, SE)."""
    cases = []
    for name in NAMES:
        with torch.device("meta"):
            head = default_meta(name).build_classifier(5)
        if n_params(default_meta(name), head) <= SMALL:
            cases.append(pytest.param(name, {}, id=name))
    for name in ("resnet50", "se_resnext50_32x4d"):
        cases.append(pytest.param(name, {"base_width": 16}, id=f"{name}-w16"))
    return cases


OPTION_CASES = option_cases()
# the big ResNet-family models get the training step too (the VGG/AlexNet/DenseNet ones are
# trained in test_backbones_tv_families.py)
BIG_RESNETS = [pytest.param(n, {}, id=n) for n in NAMES if n.startswith(("resnet", "resnext", "se_"))
               and n not in {c.values[0] for c in OPTION_CASES if not c.values[1]}]


@pytest.mark.parametrize(("name", "kw"), OPTION_CASES + BIG_RESNETS)
def test_classifier_and_one_training_step(name, kw):
    torch.manual_seed(0)
    model = Classifier(BACKBONES.build(name, **kw), num_classes=5).train()
    h = size_of(model.backbone)
    x, y = torch.randn(2, 3, h, h), torch.tensor([1, 3])
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x)
    assert logits.shape == (2, 5)
    nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged, unchanged[:5]


@pytest.mark.parametrize(("name", "kw"), OPTION_CASES)
def test_out_stages_and_frozen_stages(name, kw):
    stages = list(default_meta(name).stage_specs)
    picked = [stages[0], stages[-1]]
    torch.manual_seed(0)
    net = BACKBONES.build(name, out_stages=picked, frozen_stages=1, **kw)
    assert list(net.feature_specs) == picked
    frozen = {id(p) for m in net.frozen_modules() for p in m.parameters()}
    with torch.device("meta"):
        stem_only = BACKBONES.build(name, frozen_stages=0, **kw)
    stem = sum(p.numel() for m in stem_only.frozen_modules() for p in m.parameters())
    assert sum(p.numel() for p in net.parameters() if id(p) in frozen) > stem  # stem + stage 1
    for p in net.parameters():
        assert p.requires_grad == (id(p) not in frozen)
    assert any(p.requires_grad for p in net.parameters())

    net.train()
    frozen_bns = [bn for m in net.frozen_modules() for bn in batch_norms(m)]
    live_bns = [m for m in batch_norms(net) if all(m is not f for f in frozen_bns)]
    assert all(not m.training for m in frozen_bns) and all(m.training for m in live_bns)
    stats = [m.running_mean.clone() for m in frozen_bns]
    live = [m.running_mean.clone() for m in live_bns]
    h = size_of(net)
    feats = net(torch.randn(2, 3, h, h))
    assert list(feats) == picked
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, frozen_bns))
    assert all(not torch.equal(s, m.running_mean) for s, m in zip(live, live_bns))

    with pytest.raises(BackboneBuildError, match=stages[-1]):
        BACKBONES.build(name, out_stages=["no_such_stage"], **kw)


@pytest.mark.parametrize(("name", "kw"), OPTION_CASES)
def test_norm_options(name, kw):
    if not batch_norms(default_meta(name)):  # nothing to replace: the family says so
        for norm in ("frozen_batch", "group"):
            with pytest.raises(BackboneBuildError, match="norm"):
                BACKBONES.build(name, norm=norm, **kw)
        return
    h = size_of(default_meta(name))
    for norm, kind in (("frozen_batch", FrozenBatchNorm2d), ("group", nn.GroupNorm)):
        net = BACKBONES.build(name, norm=norm, **kw).train()
        assert not batch_norms(net) and any(isinstance(m, kind) for m in net.modules()), norm
        out = net(torch.randn(2, 3, h, h))
        assert all(torch.isfinite(f).all() for f in out.values())
    with torch.device("meta"):  # SyncBatchNorm runs only in a process group
        net = BACKBONES.build(name, norm="sync_batch", **kw)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    with pytest.raises(BackboneBuildError, match="unknown norm"):
        BACKBONES.build(name, norm="layer", **kw)


# -- parity with torchvision ---------------------------------------------------------------------
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_strictly_and_matches(name, tmp_path):
    reference = random_reference(name).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    with torch.device("meta"):  # every tensor is loaded below, so skip initialising them
        model = Classifier(BACKBONES.build(name), num_classes=1000)
    model = model.to_empty(device="cpu").eval()

    report = load_backbone_weights(model, str(path))
    assert not (report.missing or report.unexpected or report.mismatched or report.skipped)
    assert set(report.loaded) == set(map_torchvision_keys(reference.state_dict(), model.backbone))
    # the backbone alone takes everything but the classifier
    report = load_backbone_weights(model.backbone, str(path))
    assert not (report.missing or report.unexpected or report.mismatched)
    assert {k.split(".")[0] for k in report.skipped} <= set(model.backbone.classifier_prefixes)
    path.unlink()  # VGG's is half a gigabyte

    h = size_of(model.backbone)
    x = torch.randn(2, 3, h, h)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def random_reference(name: str) -> nn.Module:
    """torchvision's ``name`` (1000 classes) holding random values, made without running its own
    initialisation (VGG's 120M-parameter classifier takes seconds to initialise): every tensor is
    tiled from one random pool at its own offset, weights scaled by 1/sqrt(fan-in) so activations
    stay finite, BN variances made positive."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, **REFERENCE_OPTIONS.get(name, {}))
    model = model.to_empty(device="cpu")
    pool = torch.randn(65_537, generator=torch.Generator().manual_seed(0))
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for i, (key, t) in enumerate(tensors):
            if not t.is_floating_point():
                t.zero_()  # num_batches_tracked
                continue
            start = i * 7_919 % pool.numel()
            src = torch.cat([pool[start:], pool[:start]])
            flat = t.view(-1)
            k, rest = divmod(flat.numel(), src.numel())
            flat[: k * src.numel()].view(k, src.numel()).copy_(src.expand(k, -1))
            flat[k * src.numel() :].copy_(src[:rest])
            if t.dim() > 1:
                flat.mul_(t[0].numel() ** -0.5)
            if key.endswith("running_var"):
                flat.abs_().add_(0.5)
    return model


# -- parameter counts from the papers ------------------------------------------------------------
def se_parameters(layers, expansion=4, base=64, r=16):
    """Parameters SE adds to a bottleneck ResNet (Hu et al., Sec. 3 and Fig. 3).

    Each block with C output channels gains two 1x1 convs with biases, C -> C/r -> C:
    C*C/r + C/r + C*C/r + C. Stage k (0-based) has C = base * 2^k * expansion.
    """
    total = 0
    for k, n in enumerate(layers):
        c = base * 2**k * expansion
        total += n * (2 * c * c // r + c // r + c)
    return total


# SE networks: their plain counterpart (torchvision's count; ResNeXt-101 32x4d built here, since
# torchvision has no such model) plus se_parameters(). SE-ResNet-50 is ResNet-50's 25,557,032 +
# 2,530,992 = 28,088,024, the "~10% more parameters" (28.1M vs 25.6M) of Hu et al., Sec. 4.
SE_COUNTS = {
    "se_resnet50": ((3, 4, 6, 3), "resnet50", 28_088_024),
    "se_resnet101": ((3, 4, 23, 3), "resnet101", 49_326_872),
    "se_resnet152": ((3, 8, 36, 3), "resnet152", 66_821_848),
    "se_resnext50_32x4d": ((3, 4, 6, 3), "resnext50_32x4d", 27_559_896),
    "se_resnext101_32x4d": ((3, 4, 23, 3), "resnext101_32x4d", 48_955_416),
}


@pytest.mark.parametrize("name", list(SE_COUNTS))
def test_se_parameter_counts(name):
    from torchvision.models.resnet import Bottleneck, ResNet

    layers, plain, expected = SE_COUNTS[name]
    with torch.device("meta"):
        net = BACKBONES.build(name)
        if plain == "resnext101_32x4d":
            reference = ResNet(Bottleneck, list(layers), groups=32, width_per_group=4)
        else:
            reference = torchvision.models.get_model(plain, weights=None)
        head = net.build_classifier(1000)
    assert n_params(net, head) == expected
    assert n_params(reference) + se_parameters(layers) == expected


def test_lenet5_has_the_papers_parameter_count():
    """C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850 = 61,706 (C3 fully connected)."""
    net = BACKBONES.build("lenet5", in_channels=1)
    model = Classifier(net, num_classes=10)
    assert n_params(model) == 61_706
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 1, 96, 80)).shape == (2, 10)  # larger inputs: pooled to 5x5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lenet5_init_answers_an_image_and_its_negative_differently(seed):
    """LeNet-5's tanh units with near-zero biases make the net an odd function, f(-x) = -f(x):
    a class shown in both contrast polarities (the shapes scenes) then gets cancelling gradients
    and training stalls at chance. With the scaled tanh, N(0, 1/fan_in) weights and U(-1, 1)
    biases the input-dependent part of the logits is at least 10 % even (0.19-0.24 measured;
    PyTorch's default init gave 0.02-0.05), and f(1) = 1 as in the paper's Appendix A."""
    from visionkit.models.backbones.lenet import ScaledTanh

    assert ScaledTanh()(torch.tensor([1.0, -1.0])).tolist() == pytest.approx([1.0, -1.0], abs=1e-4)
    torch.manual_seed(seed)
    net = BACKBONES.build("lenet5")
    head = net.build_classifier(6)
    assert head.output.bias.abs().max() == 0 and net.c1.bias.abs().max() > 0.3
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        a, b = head(net(x)["s4"]), -head(net(-x)["s4"])
    a, b = a - a.mean(0), b - b.mean(0)
    assert ((a - b) / 2).norm() > 0.1 * a.norm()


def test_reduced_width_resnet():
    net = BACKBONES.build("resnet18_w32")
    assert [s.channels for s in net.feature_specs.values()] == [32, 64, 128, 256]
    assert n_params(net) * 3.5 < n_params(default_meta("resnet18"))


def test_resnet_dilation_declares_strides():
    net = BACKBONES.build("resnet50", base_width=16, dilate=(False, True, True)).eval()
    assert [s.stride for s in net.feature_specs.values()] == [4, 8, 8, 8]
    feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 8, 8]
    with pytest.raises(BackboneBuildError, match="cannot dilate"):
        BACKBONES.build("resnet18_w32", dilate=(False, False, True))


# -- loading weights -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_misfit_weights_refuse_with_a_one_line_fix(resnet18_file):
    model = Classifier(BACKBONES.build("resnet18"), num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(model, str(resnet18_file))
    msg = str(err.value)
    assert "\n" not in msg and str(resnet18_file) in msg
    assert "head.fc.weight" in msg and "weights_skip" in msg
    before = model.backbone.conv1.weight.clone()
    for skip in (["fc"], ["head.fc"]):  # a new classifier, named as in the file or in the model
        report = load_backbone_weights(model, str(resnet18_file), skip=skip)
        assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
        assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight"]
    assert not torch.equal(before, model.backbone.conv1.weight)

    with pytest.raises(
        CheckpointError, match=r"conv1.weight: \(64, 3, 7, 7\) -> \(32, 3, 7, 7\).*pick the backbone"
    ):
        load_backbone_weights(BACKBONES.build("resnet18_w32"), str(resnet18_file))


def test_weights_into_related_backbones(resnet18_file, tmp_path):
    # frozen BN keeps no step counter; its statistics still load
    net = BACKBONES.build("resnet18", norm="frozen_batch")
    report = load_backbone_weights(net, str(resnet18_file))
    assert not report.missing and any("num_batches_tracked" in k for k in report.skipped)
    # group norm keeps no statistics: refused with the reason
    with pytest.raises(CheckpointError, match="batch-norm statistics"):
        load_backbone_weights(BACKBONES.build("resnet18", norm="group"), str(resnet18_file))
    # an SE-ResNet starts from ResNet weights: only the SE blocks are missing
    path = tmp_path / "r50.pth"
    with torch.device("meta"):
        r50 = torchvision.models.resnet50(weights=None)
    torch.save({"model": r50.to_empty(device="cpu").state_dict(), "epoch": 3}, path)
    report = load_backbone_weights(BACKBONES.build("se_resnet50"), str(path))
    assert report.missing and all(".se." in k for k in report.missing)
    # our own layout (a trainer checkpoint), saved from DistributedDataParallel
    model = Classifier(BACKBONES.build("resnet18_w32"), num_classes=3)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    report = load_backbone_weights(Classifier(BACKBONES.build("resnet18_w32"), 3), str(path))
    assert not (report.missing or report.skipped)
    report = load_backbone_weights(BACKBONES.build("resnet18_w32"), str(path))
    assert not report.missing and sorted(report.skipped) == ["head.fc.bias", "head.fc.weight"]


def test_torchvision_weights_names(resnet18_file, tmp_path, monkeypatch):
    import shutil

    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    shutil.copy(resnet18_file, cached)  # what an earlier download leaves in TORCH_HOME
    report = load_backbone_weights(BACKBONES.build("resnet18"), "ResNet18_Weights.IMAGENET1K_V1")
    assert not report.missing and len(report.loaded) == 120

    cached.unlink()

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="ResNet18_Weights.IMAGENET1K_V1.*TORCH_HOME"):
        load_backbone_weights(BACKBONES.build("resnet18"), "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match="unknown torchvision weights"):
        load_backbone_weights(BACKBONES.build("resnet18"), "ResNet18_Weights.NOPE")
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match=f"weights file '{bad}' is not a PyTorch file"):
        load_backbone_weights(BACKBONES.build("resnet18"), str(bad))
    with pytest.raises(CheckpointError, match="neither an existing file"):
        load_backbone_weights(BACKBONES.build("resnet18"), str(tmp_path / "missing.pth"))
