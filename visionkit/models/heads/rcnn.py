"""Two-stage detectors on any backbone: FPN -> RPN -> RoI box head -> optional RoI mask head.

Faster R-CNN (Ren et al. 2015) and Mask R-CNN (He et al. 2017) assembled from torchvision's tested
parts -- ``GeneralizedRCNNTransform``, ``AnchorGenerator``, ``RegionProposalNetwork``, ``RoIHeads``,
``MultiScaleRoIAlign`` and the Mask R-CNN heads -- over our FPN neck, so the channels and strides
flow from the backbone's ``feature_specs``. Ours are the wiring, the per-level anchor sizes, the
box-regression layers kept in float32 under autocast (:func:`keep_box_deltas_float32`), the
training-time RoIAlign with a parallel backward (:mod:`visionkit.models.heads.roi_align`), and
masks kept on their boxes' pixels: target masks resized nearest-exact, predicted masks pasted at
sub-pixel precision (:class:`_AlignedMaskTransform`).

Why not ``torchvision.models.detection.MaskRCNN`` itself: its constructor fixes the box head at
``TwoMLPHead(.., 1024)`` unless one passes every part, and its anchor defaults assume 800 px
images with 32-512 px objects. Building the parts here keeps every width and count a plain
argument, which is what makes the CPU defaults (see :class:`RCNNSettings`) possible.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from visionkit.data.transforms.segmentation import resize_masks
from visionkit.models.backbones.base import BackboneBuildError, FeatureSpec
from visionkit.models.backbones.base import norm_layer as backbone_norm_layer
from visionkit.models.heads.roi_align import FastMultiScaleRoIAlign
from visionkit.models.heads.settings import option
from visionkit.registry import HEADS, NECKS

VARIANTS = ("faster_rcnn", "mask_rcnn")
NORMS = ("none", "batch", "group")


def norm_layer(name: str):
    """The norm a head conv is built with: None for ``none``, else the backbones' factory
    (BatchNorm2d, or GroupNorm of up to 32 groups)."""
    if name not in NORMS:
        raise BackboneBuildError(f"unknown norm '{name}'; choose one of {', '.join(NORMS)}")
    return None if name == "none" else backbone_norm_layer(name)


@dataclass
class RCNNSettings:
    """Every size, count and threshold of the detector; defaults are tuned for small images on CPUs.

    Where ours differs from torchvision's ``maskrcnn_resnet50_fpn``, the help gives its value: at
    64-128 px with a handful of objects per image, 2000 proposals and 512 sampled RoIs per image are
    mostly background, and the RoI heads' cost grows linearly with them.
    """

    fpn_channels: int = option(64, "pyramid width (torchvision: 256)", min=1)
    extra_pool: bool = option(True, "a max-pooled top level, used by the RPN")
    # (option() returns a dataclasses.field with a default_factory for lists, which RUF009 cannot see)
    anchor_scales: list[float] = option(  # noqa: RUF009
        [2.0, 4.0], "anchor side = scale x the level's stride (torchvision: [8])", min=0.01)
    anchor_ratios: list[float] = option(  # noqa: RUF009
        [0.5, 1.0, 2.0], "anchor aspect ratios (height / width)", min=0.01)
    rpn_fg_iou: float = option(0.7, "RPN: anchors above this IoU are foreground", min=0, max=1)
    rpn_bg_iou: float = option(0.3, "RPN: anchors below this IoU are background", min=0, max=1)
    rpn_batch_size_per_image: int = option(64, "RPN: anchors sampled per image for its loss (torchvision: 256)",
                                           min=0)
    rpn_positive_fraction: float = option(0.5, "RPN: foreground share of the sampled anchors", min=0, max=1)
    rpn_pre_nms_top_n_train: int = option(
        256, "training: proposals kept per level before NMS (torchvision: 2000)", min=0)
    rpn_post_nms_top_n_train: int = option(
        128, "training: proposals kept per image after NMS (torchvision: 2000)", min=0)
    rpn_pre_nms_top_n_test: int = option(
        128, "inference: proposals kept per level before NMS (torchvision: 1000)", min=0)
    rpn_post_nms_top_n_test: int = option(
        64, "inference: proposals kept per image after NMS (torchvision: 1000)", min=0)
    rpn_nms_thresh: float = option(0.7, "RPN: NMS IoU threshold", min=0, max=1)
    rpn_score_thresh: float = option(0.0, "RPN: least objectness score kept", min=0, max=1)
    box_roi_size: int = option(7, "the box head's RoIAlign output side", min=1)
    # on a CPU RoIAlign's backward dominates a training step, and its cost grows with the square of this
    roi_sampling_ratio: int = option(1, "the box head's RoIAlign samples per bin side (torchvision: 2)", min=-1)
    box_representation: int = option(256, "the box head's fc width (torchvision: 1024)", min=1)
    box_fg_iou: float = option(0.5, "training: RoIs above this IoU are foreground", min=0, max=1)
    box_bg_iou: float = option(0.5, "training: RoIs below this IoU are background", min=0, max=1)
    box_batch_size_per_image: int = option(64, "training: RoIs sampled per image (torchvision: 512)", min=0)
    box_positive_fraction: float = option(
        0.25, "training: foreground share of the sampled RoIs (also bounds the mask RoIs)", min=0, max=1)
    box_score_thresh: float = option(0.05, "inference: least detection score kept", min=0, max=1)
    box_nms_thresh: float = option(0.5, "inference: NMS IoU threshold per class", min=0, max=1)
    detections_per_img: int = option(20, "inference: most detections per image (torchvision: 100)", min=1)
    box_convs: int = option(
        0, "3x3 convs (fpn_channels wide) before one fc layer; 0: two fc layers, as torchvision's", min=0)
    mask_roi_size: int = option(14, "the mask head's RoIAlign output side (masks are twice this)", min=1)
    # 2 reads every stride-4 cell under a RoI wider than 14 cells, where 1 skips about every other one
    mask_sampling_ratio: int = option(
        2, "the mask head's RoIAlign samples per bin side; 1 scores checkpoints trained before this key as "
        "they were trained", min=-1)
    # four 3x3 convs as torchvision's, narrower: about the cost of two at 64 wide, with sharper masks
    mask_convs: int = option(
        4, "the mask head's 3x3 convs; a checkpoint trained with 2 x 64 loads with mask_convs=2 "
        "mask_channels=64", min=0)
    mask_channels: int = option(48, "the mask head's width (torchvision: 256)", min=1)
    # trained from scratch the heads learn faster with a norm
    fpn_norm: str = option("batch", "norm after the FPN's convs (torchvision: none; its _v2 model: batch)",
                           choices=NORMS)
    head_norm: str = option(
        "batch", "norm after the mask head's and a conv box head's 3x3 convs (torchvision: none)", choices=NORMS)
    roi_canonical_scale: int = option(
        224, "FPN level rule for RoIs, k = 4 + log2(sqrt(wh) / this) (Lin et al. eq. 1)", min=1)
    min_size: int = option(64, min=0)
    max_size: int = option(107, min=0)
    size_divisible: int = option(32, "images are padded to a multiple of this", min=1)


class BackboneFPN(nn.Module):
    """Backbone + FPN as the ``backbone`` GeneralizedRCNN expects: ``out_channels`` and an
    ordered dict of pyramid levels.

    ``register_body=False`` keeps the backbone out of this module's parameters and state dict, for
    an owner that registers it itself (the detection task keeps it as ``task.backbone``, so its
    weights have one name, the one backbone checkpoints and ``model.backbone.weights`` use).
    """

    def __init__(self, backbone: nn.Module, channels: int, extra_pool: bool, register_body: bool = True,
                 norm: str = "none"):
        super().__init__()
        if register_body:
            self.body = backbone
        else:
            object.__setattr__(self, "body", backbone)  # a plain reference, not a submodule
        self.fpn = NECKS.build("fpn", backbone.feature_specs, channels, extra_pool=extra_pool,
                               owner=type(backbone).__name__, norm_layer=norm_layer(norm))
        self.out_channels = channels
        self.feature_specs: dict[str, FeatureSpec] = self.fpn.feature_specs

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(self.fpn(self.body(x)))


class _Float32Conv2d(nn.Conv2d):
    """A Conv2d that computes in float32 under autocast (same parameters and state-dict names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class _Float32Linear(nn.Linear):
    """A Linear that computes in float32 under autocast (same parameters and state-dict names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def keep_box_deltas_float32(rpn_head: RPNHead, box_predictor: FastRCNNPredictor) -> None:
    """Run the two box-regression layers in float32 under bf16/fp16 autocast.

    torchvision decodes boxes in the dtype of the deltas (``BoxCoder.decode`` casts the anchors
    to it), so bf16 deltas would put every proposal and detection on a grid of 1/256 of its
    magnitude: 0.5 px at 128 px, which costs AP75. The two layers are tiny; everything else
    keeps autocast's speed. Only the classes change, so weights and checkpoints are the same.
    """
    rpn_head.bbox_pred.__class__ = _Float32Conv2d
    box_predictor.bbox_pred.__class__ = _Float32Linear


def anchor_sizes(specs: dict[str, FeatureSpec], scales) -> tuple[tuple[float, ...], ...]:
    """Anchor side lengths per pyramid level: ``scale * stride`` for each scale.

    Tying the size to the level's stride keeps every level's anchors at the same density on its
    own grid (FPN, Lin et al. sec. 4.1 uses 8 x stride: 32..512 px for strides 4..64).
    """
    return tuple(tuple(float(s * spec.stride) for s in scales) for spec in specs.values())


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Each (M, M) mask of ``masks`` (N, 1, M, M) placed over its float box, moved by ``shift``
    (x, y) pixels, in an image of ``image_size`` (H, W): (N, 1, H, W), bilinear, zero outside
    the mask's cells.

    torchvision's ``paste_masks_in_image`` first rounds every box down to whole pixels and resizes
    the mask to the rounded size plus one, which moves a mask edge by up to a pixel: a small share
    of a 300 px object, a large one of the 10-20 px objects of small images (detectron2 pastes at
    sub-pixel precision for the same reason). Here pixel ``y`` (its centre at ``y + 0.5``) reads
    the mask at its exact place. Bilinear resampling along an axis is a matrix of "tent" weights,
    so the paste is two batched matmuls, with no per-box loop and no data-dependent shapes (it
    exports as it runs).
    """
    n, m = masks.shape[0], masks.shape[-1]
    h, w = image_size
    masks = masks[:, 0].float()
    boxes = boxes.float()
    cells = torch.arange(m, device=masks.device, dtype=torch.float32)

    def weights(lo, hi, size, offset):  # (N, size, M): pixel -> mask-cell interpolation weights
        centres = torch.arange(size, device=masks.device, dtype=torch.float32) + 0.5 - offset
        u = (centres[None] - lo[:, None]) / (hi - lo).clamp(min=1e-6)[:, None] * m - 0.5
        return (1 - (u[..., None] - cells).abs()).clamp(min=0)

    wy = weights(boxes[:, 1], boxes[:, 3], h, shift[1])
    wx = weights(boxes[:, 0], boxes[:, 2], w, shift[0])
    # evaluation under train.amp: keep the matmuls float32 (no autocast context when none is on,
    # so an export traces plain matmuls)
    on = torch.is_autocast_enabled(masks.device.type)
    with torch.autocast(masks.device.type, enabled=False) if on else contextlib.nullcontext():
        return (wy @ masks @ wx.transpose(1, 2)).reshape(n, 1, h, w)


class _AlignedMaskTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that keeps masks on the pixels of their boxes both ways.

    In: target masks are resized with :func:`resize_masks` (nearest-exact), not ``nearest``.
    Out: masks are pasted with :func:`paste_masks` half a pixel (at the detector's size) right
    and down: torchvision's mask targets (``project_masks_on_boxes``: RoIAlign with
    ``aligned=False``) read the ground truth there, so that is where a trained mask belongs.
    On small images half a pixel is a large share of an object's edge, so both matter most there
    (docs/detection.md).
    """

    def resize(self, image, target=None):
        masks = target.pop("masks", None) if target is not None else None
        image, target = super().resize(image, target)
        if masks is not None:
            target["masks"] = resize_masks(masks, image.shape[-2:])
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                shift = (0.5 * o_im_s[1] / im_s[1], 0.5 * o_im_s[0] / im_s[0])
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], o_im_s, shift)
        return result


class RCNN(GeneralizedRCNN):
    """torchvision's GeneralizedRCNN (resize + normalise, backbone, RPN, RoI heads, paste back to
    the input size) with the parts built from ``feature_specs`` and :class:`RCNNSettings`."""

    def __init__(self, backbone: nn.Module, num_classes: int, variant: str, settings: RCNNSettings,
                 mean, std, register_backbone: bool = True):
        if variant not in VARIANTS:
            raise BackboneBuildError(f"unknown detector '{variant}'; choose one of {', '.join(VARIANTS)}")
        s = settings
        body = BackboneFPN(backbone, s.fpn_channels, s.extra_pool, register_backbone, s.fpn_norm)
        specs = body.feature_specs
        roi_levels = [n for n in specs if n != "pool"]  # the pooled level only feeds the RPN (FPN sec. 4.2)
        anchors = AnchorGenerator(anchor_sizes(specs, s.anchor_scales),
                                  (tuple(s.anchor_ratios),) * len(specs))
        rpn_head = RPNHead(s.fpn_channels, anchors.num_anchors_per_location()[0])
        n = num_classes + 1  # + background, class 0 in torchvision's heads
        box_predictor = FastRCNNPredictor(s.box_representation, n)
        keep_box_deltas_float32(rpn_head, box_predictor)
        rpn = RegionProposalNetwork(
            anchors, rpn_head,
            s.rpn_fg_iou, s.rpn_bg_iou, s.rpn_batch_size_per_image, s.rpn_positive_fraction,
            {"training": s.rpn_pre_nms_top_n_train, "testing": s.rpn_pre_nms_top_n_test},
            {"training": s.rpn_post_nms_top_n_train, "testing": s.rpn_post_nms_top_n_test},
            s.rpn_nms_thresh, score_thresh=s.rpn_score_thresh,
        )
        box_pool = FastMultiScaleRoIAlign(roi_levels, s.box_roi_size, s.roi_sampling_ratio,
                                      canonical_scale=s.roi_canonical_scale)
        mask_kw = {}
        if variant == "mask_rcnn":
            mask_kw = {
                "mask_roi_pool": FastMultiScaleRoIAlign(roi_levels, s.mask_roi_size, s.mask_sampling_ratio,
                                                        canonical_scale=s.roi_canonical_scale),
                "mask_head": MaskRCNNHeads(s.fpn_channels, [s.mask_channels] * s.mask_convs, 1,
                                           norm_layer=norm_layer(s.head_norm)),
                "mask_predictor": MaskRCNNPredictor(s.mask_channels if s.mask_convs else s.fpn_channels,
                                                    s.mask_channels, n),
            }
        if s.box_convs:
            box_head = FastRCNNConvFCHead((s.fpn_channels, s.box_roi_size, s.box_roi_size),
                                          [s.fpn_channels] * s.box_convs, [s.box_representation],
                                          norm_layer=norm_layer(s.head_norm))
        else:
            box_head = TwoMLPHead(s.fpn_channels * s.box_roi_size**2, s.box_representation)
        roi_heads = RoIHeads(
            box_pool, box_head,
            box_predictor,
            s.box_fg_iou, s.box_bg_iou, s.box_batch_size_per_image, s.box_positive_fraction, None,
            s.box_score_thresh, s.box_nms_thresh, s.detections_per_img, **mask_kw,
        )
        transform = _AlignedMaskTransform(s.min_size, s.max_size, list(mean), list(std),
                                          size_divisible=s.size_divisible)
        super().__init__(body, rpn, roi_heads, transform)
        self.variant = variant
        self.settings = asdict(s)

    @property
    def has_masks(self) -> bool:
        return self.variant == "mask_rcnn"


for _variant in VARIANTS:  # one class; the variant says whether it has the mask head
    HEADS.register(f"detection.{_variant}", functools.partial(RCNN, variant=_variant))
