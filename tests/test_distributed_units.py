"""The pieces of multi-process training that need no process group: the samplers' shares and the
exact merge of sharded evaluators (each checked against one process over the same samples)."""

from __future__ import annotations

import itertools

import pytest
import torch

from visionkit.data.build import EpochSampler
from visionkit.engine.distributed import DistributedEpochSampler, ShardSampler, local_batch
from visionkit.errors import ConfigError
from visionkit.evaluation.accuracy import AccuracyEvaluator, MultiLabelEvaluator
from visionkit.evaluation.base import interleave
from visionkit.evaluation.coco import CocoEvaluator
from visionkit.evaluation.depth import DepthEvaluator
from visionkit.evaluation.miou import MIoUEvaluator


def test_two_ranks_batches_together_are_one_process_batches():
    one = EpochSampler(64, seed=3)
    one.set_epoch(2)
    order = [pos for _, pos in one]
    ranks = []
    for r in range(2):
        s = DistributedEpochSampler(64, seed=3, rank=r, world=2)
        s.set_epoch(2)
        ranks.append([pos for _, pos in s])
    for k in range(4):  # global batch 16 = 8 per rank
        both = ranks[0][8 * k:8 * k + 8] + ranks[1][8 * k:8 * k + 8]
        assert sorted(both) == sorted(order[16 * k:16 * k + 16])


def test_resume_skips_the_same_batches_on_every_rank_and_odd_sizes_are_padded():
    s = DistributedEpochSampler(9, seed=0, rank=1, world=2)
    s.set_epoch(1)
    full = [pos for _, pos in s]
    assert len(full) == len(DistributedEpochSampler(9, 0, 0, 2)) == 5  # 9 padded to 10
    s.set_epoch(1, start=2)
    assert [pos for _, pos in s] == full[2:] and len(s) == 3


def test_evaluation_shards_cover_every_sample_once_and_interleave_restores_order():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(itertools.chain.from_iterable(shards)) == list(range(7))
    assert interleave(shards) == list(range(7))


def test_the_global_batch_must_split_evenly():
    assert local_batch(16, 2) == 8
    with pytest.raises(ConfigError, match="data.batch_size.*multiple of 3; use 15 or 18"):
        local_batch(16, 3)


def _compare(make, samples, world=2):
    """One evaluator over every sample (one per batch) against ``world`` shards merged."""
    one = make()
    for batch, pred in samples:
        one.process(batch, pred)
    shards = [make() for _ in range(world)]
    for i, (batch, pred) in enumerate(samples):
        shards[i % world].process(batch, pred)
    merged = shards[0]
    merged.merge(shards)
    assert merged.compute() == one.compute()
    assert merged.details() == one.details()
    return one, merged


def test_every_evaluator_merges_to_the_one_process_result():
    g = torch.Generator().manual_seed(0)
    cls = [({"labels": torch.randint(0, 6, (1,), generator=g)}, {"logits": torch.randn(1, 6, generator=g)})
           for _ in range(11)]
    _compare(lambda: AccuracyEvaluator(list("abcdef")), cls)
    ml = [({"labels": (torch.rand(1, 4, generator=g) > 0.5).float()},
           {"scores": torch.rand(1, 4, generator=g).round(decimals=1)}) for _ in range(9)]  # score ties
    _compare(lambda: MultiLabelEvaluator(list("abcd")), ml)
    seg = [({"semantic": torch.randint(0, 4, (1, 5, 5), generator=g)},
            {"labels": torch.randint(0, 4, (1, 5, 5), generator=g)}) for _ in range(5)]
    _compare(lambda: MIoUEvaluator(list("abcd")), seg)
    depth = [({"depth": torch.rand(1, 6, 6, generator=g) * 9 + 1},
              {"depth": torch.rand(1, 6, 6, generator=g) * 9 + 1}) for _ in range(7)]
    depth[3][0]["depth"].zero_()  # no valid pixel: skipped, and counted
    _, merged = _compare(lambda: DepthEvaluator(max_depth=10.0, median_scaling=True), depth)
    assert merged.details()["skipped_images"] == 1


def test_coco_merge_renumbers_images_and_annotations_like_one_process():
    g = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(5):
        n = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 20
        boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 8], 1)
        labels = torch.randint(0, 3, (n,), generator=g)
        batch = {"images": torch.zeros(1, 3, 32, 32), "boxes": [boxes], "labels": [labels]}
        pred = [{"boxes": boxes + torch.rand(n, 4, generator=g), "labels": labels,
                 "scores": torch.rand(n, generator=g)}]
        samples.append((batch, pred))
    one, merged = _compare(lambda: CocoEvaluator(["a", "b", "c"], masks=False), samples)
    assert merged.results == one.results and merged.gt == one.gt and merged.images == one.images


@pytest.mark.parametrize("rule,factor", [("none", 1.0), ("linear", 2.0), ("sqrt", 2 ** 0.5)])
def test_learning_rate_scaling_is_opt_in_and_follows_the_global_batch(tiny_cfg, tmp_path, rule, factor):
    from visionkit.engine.trainer import Trainer

    cfg = tiny_cfg(**{"train.scale_lr": rule, "train.reference_batch": 32, "data.batch_size": 32,
                      "train.accumulate": 2, "train.optimizer.lr": 0.01})
    said = []
    trainer = Trainer(cfg, tmp_path / "run", log=said.append)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.01 * factor] * 2)
    assert trainer.scheduler.base_lrs == pytest.approx([0.01 * factor] * 2)
    assert any("global batch of 64" in s for s in said) == (rule != "none")


def _accumulate_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: a linear model under DDP, 4 batches in windows of 2 through the trainer's
    ``gradient_sync``; counts DDP's gradient all-reduces, then averages by hand."""
    import os

    import torch.distributed as dist
    from torch import nn

    from visionkit.engine.distributed import Group, average_gradients, gradient_sync

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
        calls = []

        def count(state, bucket):
            calls.append(1)
            return dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future().then(lambda f: f.value()[0])

        ddp.register_comm_hook(None, count)
        g = torch.Generator().manual_seed(rank)
        for i in range(4):
            with gradient_sync(ddp, sync=(i + 1) % 2 == 0):
                ddp(torch.randn(5, 3, generator=g)).pow(2).sum().backward()
        synced = ddp.module.weight.grad.clone()
        ddp.module.weight.grad = torch.full((2, 3), float(rank + 1))
        ddp.module.bias.grad = None
        average_gradients(Group(rank, world), ddp.module.parameters())
        torch.save({"calls": len(calls), "synced": synced, "weight": ddp.module.weight.grad,
                    "bias": ddp.module.bias.grad}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_accumulation_all_reduces_once_per_window_and_a_skipped_closing_batch_is_averaged_by_hand(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_accumulate_worker, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["calls"] == r1["calls"] == 2  # one bucket, two windows: not four all-reduces
    assert torch.equal(r0["synced"], r1["synced"])  # both ranks hold the average after the window
    for r in (r0, r1):  # (1 + 2) / 2 on both, and zeros for the parameter that had no gradient
        assert torch.equal(r["weight"], torch.full((2, 3), 1.5)) and torch.equal(r["bias"], torch.zeros(2))
