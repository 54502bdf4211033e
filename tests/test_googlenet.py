"""GoogLeNet (Inception v1): torchvision's parameter count and state dicts, the auxiliary
classifiers (built on request, trained at weight 0.3, absent at eval and export), the config's
refusals, and every task's head on it.

The contract tests every backbone gets (declared stages, minimum input size, options, parity with
torchvision without the auxiliary classifiers) run in test_backbones.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from visionkit import load_config
from visionkit.data.build import build_datasets, build_source
from visionkit.data.collate import collate_samples
from visionkit.errors import ConfigError
from visionkit.models.weights import load_backbone_weights
from visionkit.registry import BACKBONES, TASKS
from visionkit.tasks.classification import AUX_WEIGHT, ClassificationTask

CLASSES = [f"c{i}" for i in range(1000)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: a second intra-op thread costs more than it saves on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_googlenet(aux_logits: bool) -> nn.Module:
    """torchvision's GoogLeNet with its own initialisation and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=aux_logits, init_weights=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def test_parameter_count_is_torchvisions_without_the_auxiliary_classifiers():
    with torch.device("meta"):
        task = ClassificationTask(BACKBONES.build("googlenet"), CLASSES)
        with_aux = ClassificationTask(BACKBONES.build("googlenet", aux_classes=1000), CLASSES)
        reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    assert n_params(task) == 6_624_904
    assert n_params(with_aux) == n_params(reference)  # aux1 and aux2 are torchvision's too


def test_torchvision_state_dict_loads_with_the_classifier_and_matches(tmp_path):
    reference = torchvision_googlenet(aux_logits=False).eval()
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    task = ClassificationTask(BACKBONES.build("googlenet"), CLASSES).eval()
    report = load_backbone_weights(task, str(path))
    assert not (report.missing or report.unexpected or report.mismatched or report.skipped)
    assert {k.split(".")[0] for k in report.loaded} == {"backbone", "head"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(task(x), reference(x), atol=1e-5)


def test_torchvision_auxiliary_classifiers_load_by_name_and_train_alike(tmp_path):
    """A torchvision file with ``aux1``/``aux2`` (as GoogLeNet_Weights.IMAGENET1K_V1 holds):
    into a model with them, everything loads and training-mode logits are torchvision's
    (same dropout draws, in the same order); into one without, their keys are skipped."""
    reference = torchvision_googlenet(aux_logits=True)
    path = tmp_path / "googlenet_aux.pth"
    torch.save(reference.state_dict(), path)

    task = ClassificationTask(BACKBONES.build("googlenet", aux_classes=1000), CLASSES)
    report = load_backbone_weights(task, str(path))
    assert not (report.missing or report.skipped or report.unexpected)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    logits, aux2, aux1 = reference.train()(x)
    torch.manual_seed(3)
    ours, aux = task.train()._logits(x, with_aux=True)
    assert list(aux) == ["aux1", "aux2"]
    for a, b in ((ours, logits), (aux["aux1"], aux1), (aux["aux2"], aux2)):
        assert torch.allclose(a, b, atol=1e-5)

    plain = ClassificationTask(BACKBONES.build("googlenet"), CLASSES)
    report = load_backbone_weights(plain, str(path))
    assert not (report.missing or report.unexpected)
    assert report.skipped and {k.split(".")[0] for k in report.skipped} == {"aux1", "aux2"}
    assert "skipped: aux1." in report.summary()


def test_googlenet_weights_name_loads_from_the_cache(tmp_path, monkeypatch):
    """``GoogLeNet_Weights.IMAGENET1K_V1`` (placed in TORCH_HOME as a download leaves it)."""
    from torchvision.models import GoogLeNet_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / GoogLeNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(torchvision_googlenet(aux_logits=True).state_dict(), tmp_path / "tv.pth")
    shutil.copy(tmp_path / "tv.pth", cached)
    report = load_backbone_weights(BACKBONES.build("googlenet"), "GoogLeNet_Weights.IMAGENET1K_V1")
    assert not report.missing and {k.split(".")[0] for k in report.skipped} == {"aux1", "aux2", "fc"}


# -- auxiliary classifiers in the classification task ------------------------------------------------
def aux_config(make_config, **over):
    return load_config(make_config(**{"model.backbone.name": "googlenet", "model.backbone.aux_logits": True,
                                      **over}))


def test_aux_losses_are_weighted_in_training_and_gone_in_eval(make_config):
    cfg = aux_config(make_config)
    task = TASKS.get("classification").from_config(cfg, {"classes": ["a", "b", "c"]})
    assert isinstance(task.backbone.aux1, nn.Module) and task.backbone.aux_outputs == ["aux1", "aux2"]
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    batch = {"images": images, "labels": labels}
    task.train()
    torch.manual_seed(0)
    losses = task.loss(batch)
    assert set(losses) == {"loss_ce", "loss_aux1", "loss_aux2"}
    torch.manual_seed(0)  # the same dropout draws: the terms are 0.3 x cross-entropy of each output
    logits, aux = task._logits(images, with_aux=True)
    assert torch.allclose(losses["loss_ce"], F.cross_entropy(logits, labels))
    for name in ("aux1", "aux2"):
        assert torch.allclose(losses[f"loss_{name}"], AUX_WEIGHT * F.cross_entropy(aux[name], labels))
    sum(losses.values()).backward()
    for part in (task.backbone.aux1, task.backbone.aux2, task.head, task.backbone.conv1):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())

    task.eval()
    with torch.no_grad():
        assert list(task.backbone(images)) == ["conv3", "inception3", "inception4", "inception5"]
        assert task.predict(batch)["logits"].shape == (4, 3)
    assert task.compile_targets() == [task.backbone, task.head]


def test_without_aux_logits_googlenet_trains_as_every_family(make_config):
    cfg = load_config(make_config(**{"model.backbone.name": "googlenet"}))
    task = TASKS.get("classification").from_config(cfg, {"classes": ["a", "b"]}).train()
    assert task.backbone.aux1 is None and task.backbone.aux_outputs == []
    losses = task.loss({"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})
    assert set(losses) == {"loss_ce"} and task.compile_targets() == [task]


@pytest.mark.parametrize("task", ["segmentation", "depth", "detection"])
def test_aux_logits_is_refused_outside_classification(make_config, task):
    extra = {"data.depth": {"min_depth": 1.0, "max_depth": 16.0}} if task == "depth" else {}
    cfg = aux_config(make_config, task=task, **extra)
    with pytest.raises(ConfigError, match=rf"tiny.yaml: 'model.backbone.aux_logits' is true, but task '{task}'"):
        TASKS.get(task).from_config(cfg, {"classes": ["a", "b", "c"]})


def test_aux_logits_is_refused_on_a_backbone_without_auxiliary_classifiers(make_config):
    cfg = aux_config(make_config, **{"model.backbone.name": "resnet18_w32"})
    message = r"'model.backbone.aux_logits' is true, but backbone 'resnet18_w32' has no .*googlenet has"
    with pytest.raises(ConfigError, match=message):
        TASKS.get("classification").from_config(cfg, {"classes": ["a", "b"]})


def test_stem_tap_and_stage_shapes():
    net = BACKBONES.build("googlenet", out_stages=["stem", "conv3", "inception5"]).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "stem": (64, 32, 48), "conv3": (192, 16, 24), "inception5": (1024, 2, 3)}


def test_aux_classifiers_need_their_stage_returned():
    with pytest.raises(ValueError, match="aux1 \\(after inception4a\\).*ends at 'inception3'"):
        BACKBONES.build("googlenet", aux_classes=3, out_stages=["inception3"])


def test_model_with_aux_exports_to_onnx_without_them(make_config, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_export import checkpoint

    from visionkit.export.api import export

    cfg = make_config("aux.yaml", **{"model.backbone.name": "googlenet", "model.backbone.aux_logits": True})
    out = tmp_path / "googlenet.onnx"
    checks = export(cfg, checkpoint(cfg), "onnx", out, verify_export=True, samples=2, log=lambda *_: None)["checks"]
    assert checks and all(c.ok for c in checks)
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["logits", "scores"]
    assert not [i.name for i in graph.initializer if "aux" in i.name]


# -- every task's head on GoogLeNet ------------------------------------------------------------------
HEADS = {
    "segmentation": {"model.head": {"name": "semantic_fpn", "channels": 8, "fpn_channels": 8}},
    "depth": {"model.head": {"channels": 8}, "data.depth": {"min_depth": 1.0, "max_depth": 16.0}},
    "detection": {"model.head": {"name": "mask_rcnn", "fpn_channels": 16, "box_representation": 32,
                                 "mask_channels": 16, "mask_convs": 1}},
}


@pytest.mark.parametrize("task_name", list(HEADS))
def test_every_task_trains_a_step_and_predicts_on_googlenet(make_config, task_name):
    cfg = load_config(make_config(f"{task_name}.yaml", **{"task": task_name, "model.backbone.name": "googlenet",
                                                          **HEADS[task_name]}))
    source = build_source(cfg)
    torch.manual_seed(0)
    task = TASKS.get(task_name).from_config(cfg, {**source.info, "classes": source.classes})
    data, _ = build_datasets(cfg, type(task), None, splits=("train",), source=source)
    batch = task.preprocess(collate_samples([data["train"][(0, i)] for i in range(2)]))
    task.train()
    losses = task.loss(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # (detection holds the backbone inside torchvision's model, so find it by name)
    grad = next(p.grad for n, p in task.named_parameters() if n.endswith("conv1.conv.weight"))
    assert grad is not None and grad.abs().sum() > 0  # the loss reaches GoogLeNet's first layer
    task.eval()
    predictions = task.predict(batch)
    assert task.describe(predictions, 0)
