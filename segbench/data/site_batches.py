"""Training batches drawn from one site (scanner) each: the training half of per-site batch norm.

Per-site BN (domain-specific BN, Chang et al., CVPR 2019, with the affine weights shared) wants
every BN layer to normalise each image with statistics of its own scanner. With batches that
mix sites, a batch's statistics blend the scanners' contrasts; with ``data.site_batches: true``
every training batch comes from one site, so the batch statistics *are* that site's, and the
shared conv and affine weights learn from site-normalised features. At test, ``segbench adapt
RUN --methods site_bn`` estimates each test site's statistics from its own unlabeled images
and normalises each subject with its site's (a held-out scanner has no training statistics to
choose; that estimate is what "chosen by site" can mean for it).

The running statistics the trainer keeps meanwhile are an average over the sites' batches; they
are what validation and the ``none`` method use.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler, Subset

from segbench.errors import SegbenchError


def sample_sites(dataset) -> list[str] | None:
    """Each item's site (from ``sites.tsv``), or None when the dataset does not know its sites."""
    if isinstance(dataset, Subset):
        inner = sample_sites(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    sites = getattr(dataset, "sample_sites", None)
    return sites() if callable(sites) else None


def check_site_batches(dataset, global_batch: int) -> dict[str, np.ndarray]:
    """Each site's item indices; one line naming what is missing when batches cannot be per site."""
    sites = sample_sites(dataset)
    if sites is None:
        raise SegbenchError(
            f"data.site_batches=true: data={type(dataset).__name__} has no sites; it needs a brain "
            "dataset (data=brain_phantom, brats, brats3d) with a sites.tsv (subject<TAB>site)"
        )
    unknown = sorted({s for s in sites if not s})
    if unknown or not sites:
        raise SegbenchError(
            "data.site_batches=true needs every training subject's site: add the missing subjects "
            "to sites.tsv (subject<TAB>site) in data.root"
        )
    by_site = {site: np.flatnonzero(np.asarray(sites) == site) for site in sorted(set(sites))}
    small = {site: len(idx) for site, idx in by_site.items() if len(idx) < global_batch}
    if small:
        site, n = next(iter(small.items()))
        raise SegbenchError(
            f"data.site_batches=true: site {site} has {n} training sample(s), fewer than one batch "
            f"of {global_batch}; lower data.batch_size or drop data.site_batches"
        )
    return by_site


class SiteBatchSampler(Sampler[list]):
    """Batches of ``(index, seed)``, each from a single site, for steps ``start .. stop - 1``.

    An epoch permutes each site's items, cuts each site into whole global batches (a site's last
    incomplete batch is dropped) and shuffles the batches of all sites together, so each site
    contributes batches in proportion to its size. Like ``StepBatchSampler``, step ``s`` is a pure
    function of (seed, s): a resumed run sees the same batches. Under DDP each rank takes its
    slice of the global batch, so every rank normalises with the same site.
    """

    def __init__(
        self,
        by_site: dict[str, np.ndarray],
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.by_site, self.batch, self.seed = by_site, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = sum(len(idx) // self.global_batch for idx in by_site.values())

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for idx in self.by_site.values():
            perm = rng.permutation(idx)
            whole = len(perm) // self.global_batch * self.global_batch
            batches += list(perm[:whole].reshape(-1, self.global_batch))
        return [batches[i] for i in rng.permutation(len(batches))]

    def site_of(self, step: int) -> str:
        """The site that step ``step`` trains on."""
        epoch, k = divmod(step, self.steps_per_epoch)
        first = int(self._epoch(epoch)[k][0])
        return next(site for site, idx in self.by_site.items() if first in idx)

    def __iter__(self) -> Iterator[list]:
        batches, batches_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != batches_epoch:
                batches, batches_epoch = self._epoch(epoch), epoch
            mine = batches[k][self.rank * self.batch : (self.rank + 1) * self.batch]
            yield [(int(i), zlib.crc32(f"{self.seed}/{step}/{i}".encode())) for i in mine]
