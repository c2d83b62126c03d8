"""Per-site BN: one-site training batches (data.site_batches) and per-site statistics at test (site_bn)."""

import copy
import itertools
import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from segbench.analysis.adapt import adapt
from segbench.data.site_batches import SiteBatchSampler, check_site_batches, sample_sites
from segbench.errors import SegbenchError
from segbench.train.trainer import train

SITES = ["a"] * 7 + ["b"] * 12 + ["c"] * 5  # 24 items, uneven sites


class Sited:
    def __init__(self, sites):
        self._sites = list(sites)

    def __len__(self):
        return len(self._sites)

    def sample_sites(self):
        return self._sites


def _batches(sampler):
    return [[i for i, _ in batch] for batch in sampler]


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_every_batch_is_one_site_and_each_epoch_uses_each_sites_whole_batches(batch):
    by_site = check_site_batches(Sited(SITES), batch)
    sampler = SiteBatchSampler(by_site, batch, seed=5, start=0, stop=0)
    per_epoch = sum(n // batch for n in (7, 12, 5))
    assert sampler.steps_per_epoch == per_epoch
    sampler.stop = per_epoch
    epoch = _batches(sampler)
    for step, items in enumerate(epoch):
        assert len(items) == batch and len({SITES[i] for i in items}) == 1
        assert sampler.site_of(step) == SITES[items[0]]
    used = [i for items in epoch for i in items]
    assert len(used) == len(set(used))  # no item twice in an epoch
    for site, n in (("a", 7), ("b", 12), ("c", 5)):
        assert sum(SITES[i] == site for i in used) == n // batch * batch


def test_site_batches_are_a_pure_function_of_seed_and_step():
    by_site = check_site_batches(Sited(SITES), 2)
    whole = list(SiteBatchSampler(by_site, 2, seed=1, start=0, stop=40))
    assert list(SiteBatchSampler(by_site, 2, seed=1, start=17, stop=40)) == whole[17:]  # a resumed run
    assert list(SiteBatchSampler(by_site, 2, seed=2, start=0, stop=40)) != whole
    assert _batches(SiteBatchSampler(by_site, 2, 1, 0, 40))[:11] != _batches(SiteBatchSampler(by_site, 2, 1, 11, 22))


def test_ranks_share_one_site_per_step_and_split_its_global_batch():
    by_site = check_site_batches(Sited(SITES), 4)
    ranks = [_batches(SiteBatchSampler(by_site, 2, 3, 0, 12, rank=r, world_size=2)) for r in (0, 1)]
    one = _batches(SiteBatchSampler(by_site, 4, 3, 0, 12))
    for step in range(12):
        assert ranks[0][step] + ranks[1][step] == one[step]
        assert len({SITES[i] for i in one[step]}) == 1


@pytest.mark.parametrize(
    "sites, batch, message",
    [
        (None, 2, "has no sites; it needs a brain dataset"),
        (["a", "", "b", "b"], 1, "needs every training subject's site"),
        (["a", "b", "b", "b"], 2, "site a has 1 training sample(s), fewer than one batch of 2"),
    ],
)
def test_site_batches_refused_in_one_line(sites, batch, message):
    data = Sited(sites) if sites is not None else object()
    with pytest.raises(SegbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_site_batches(data, batch)


def test_sites_of_a_subset_follow_its_indices():
    assert sample_sites(Subset(Sited(SITES), [0, 8, 23])) == ["a", "b", "c"]
    assert sample_sites(Subset(object(), [0])) is None


def test_a_site_batches_run_trains_on_one_site_per_step(tiny_cfg, tmp_path):
    cfg = tiny_cfg("data.site_batches=true", "norm=batch", "data.batch_size=2")
    train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_site_bn_with_one_test_site_is_adabn(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("data.test_sites=[site1]", "data.site_batches=true", "norm=batch", "data.batch_size=1"), run)
    out = adapt(str(run), ["adabn", "site_bn"], batches=2)
    adabn, site_bn = out["methods"]["adabn"], out["methods"]["site_bn"]
    assert site_bn["dice"] == pytest.approx(adabn["dice"], abs=1e-12)
    assert site_bn["per_case"] == adabn["per_case"] and site_bn["ap"] == pytest.approx(adabn["ap"])
    assert site_bn["bn_batches_per_site"] == {"site1": 2}
    assert json.loads((run / "adapt.json").read_text())["site_batches"] is True


def test_site_bn_scores_each_site_with_its_own_statistics(tiny_cfg, tmp_path):
    """Two test sites: each site's subjects scored with statistics of that site's images only."""
    from segbench.analysis.diagnose import load_run
    from segbench.eval.evaluate import evaluate
    from segbench.nn.bn_stats import recompute_bn_stats
    from segbench.ranks import DistContext

    run = tmp_path / "run"
    train(tiny_cfg("data.test_sites=[site0,site1]", "norm=batch", "data.batch_size=1"), run)
    out = adapt(str(run), ["none", "site_bn"], batches=3)
    site_bn = out["methods"]["site_bn"]
    assert site_bn["ap"] is None and set(site_bn["bn_batches_per_site"]) == {"site0", "site1"}
    cfg, model, _, _, test_set, loss_fn, _ = load_run(run, "best.pt", "test")
    sites, ctx = sample_sites(test_set), DistContext(0, 1, 0, torch.device("cpu"))
    expected = {}
    for site in ("site0", "site1"):
        subset = Subset(test_set, [i for i, s in enumerate(sites) if s == site])
        site_model = copy.deepcopy(model)
        loader = DataLoader(subset, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(0))
        recompute_bn_stats(site_model, (x for x, _ in itertools.islice(itertools.cycle(loader), 3)), ctx.device)
        scores = evaluate(
            site_model.eval(),
            subset,
            loss_fn,
            ctx,
            int(cfg.data.val_batch_size),
            threshold=out["threshold_from_val"],
            hd95=False,
            tune=False,
        )[0]
        expected.update(scores["per_case"])
    assert site_bn["per_case"] == expected
    assert site_bn["dice"] == pytest.approx(np.mean([c["dice"] for c in expected.values()]))


def test_site_bn_refused_without_bn(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("data.test_sites=[site1]", "norm=group", "norm.num_groups=2"), run)
    with pytest.raises(SegbenchError, match="--methods site_bn: norm=group keeps no running statistics"):
        adapt(str(run), ["site_bn"])


@pytest.mark.parametrize(
    "split, sites, message",
    [
        (
            "by_site",
            None,
            "data.split=by_site needs the held-out site(s) named: data.test_sites=[<site>] (the data's sites: "
            "site0, site1, site2)",
        ),
        ("by_subject", ["site1"], "data.split=by_subject and data.test_sites=['site1'] ask for two different splits"),
        ("by_scanner", None, "data.split"),
    ],
)
def test_the_split_kind_is_checked_in_one_line(tiny_brats, split, sites, message):
    from segbench.data import check_split_kind

    with pytest.raises(SegbenchError, match=re.escape(message)):
        check_split_kind(split, {"root": str(tiny_brats), "test_sites": sites})


def test_by_site_names_the_same_split_as_test_sites(tiny_cfg, tmp_path):
    from omegaconf import OmegaConf

    from segbench.data import build_datasets

    plain = build_datasets(OmegaConf.to_container(tiny_cfg("data.test_sites=[site1]").data, resolve=True))
    named = build_datasets(
        OmegaConf.to_container(tiny_cfg("data.test_sites=[site1]", "data.split=by_site").data, resolve=True)
    )
    assert plain.test.cases == named.test.cases and set(sample_sites(named.test)) == {"site1"}
    assert not set(sample_sites(named.train)) & {"site1"}
