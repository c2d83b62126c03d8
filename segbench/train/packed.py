"""Several seeds of one arm trained as one packed network, each still an ordinary run.

Every member is a full ``train()`` of its own config in its own thread: its own model built from
its seed, data order and augmentation from its seed, its optimizer, schedule, checkpoints,
TensorBoard run, validations and metrics.json, so ``compare``, resume and ``diagnose`` see K
ordinary runs. The members take turns (one thread runs at a time) and meet once per optimizer
step; the last to arrive computes every member's loss and gradient, and each member then takes
its own optimizer step on its own weights. Two ways to compute them:

- ``vectorize=True`` (the default on a GPU): one ``torch.func.vmap`` over the members' stacked
  weights, where a batched conv becomes one grouped conv (the idea of Packed-Ensembles, Laurent
  et al., ICLR 2023): many small kernels become one. vmap computes each member's function on its
  own, so packed and separate runs agree to rounding: 1e-10 over 20 steps in float64, tested per
  norm. In float32 the grouped kernels sum in another order and training grows those last-bit
  differences, as it does between two thread counts.
- ``vectorize=False`` (the default on the CPU, where a grouped conv is no faster than the convs
  it replaces): members' forward and backward one after another, the very kernels of separate
  runs, so float32 results equal separate runs bit for bit (tested); what the pack shares is the
  process: imports, Hydra, the preflight dry run and the data cache.

What cannot pack: norms that read a tensor's value into Python (``.item()``, which vmap refuses),
DDP, ``torch.compile`` and float16's loss scaler; dropout cannot pack into one vmapped step (each
member's masks must come from its own seed), so a model with dropout takes turns by default.
``pack_refusal`` names the reason and the launcher then trains those seeds one by one.

Each member keeps its own stream of torch's global RNG (dropout, a DataLoader's seed): it is put
in place whenever that member's code or its forward runs, so the members of a pack draw what
separate runs of their seeds draw.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import torch
from omegaconf import DictConfig

from segbench.train.losses import vmap_ready

log = logging.getLogger(__name__)

# Norms whose forward reads a value into Python (vmap cannot batch that): why, in one line.
UNPACKABLE_NORMS = {
    "batchrenorm": "batch renorm clips r and d with Python numbers read from its running statistics",
    "crossbatch": "cross-iteration BN keeps its window of past statistics by Python-side indexing",
}


def pack_refusal(cfg: DictConfig, vectorize: bool | None = None) -> str | None:
    """Why runs of ``cfg`` cannot be packed (``vectorize``: into one vmapped step; None: the
    default for its device), or None when they can."""
    from segbench.nn.norms import canonical_norm_name

    vectorize = vectorize_by_default(cfg) if vectorize is None else vectorize
    norm = canonical_norm_name(str(cfg.norm.name))
    if vectorize and norm in UNPACKABLE_NORMS:
        return f"norm={cfg.norm.name} cannot pack into one vmapped step: {UNPACKABLE_NORMS[norm]}"
    if vectorize and _has_dropout(cfg):
        return (
            f"model.dropout={cfg.model.dropout} cannot pack into one vmapped step: each member's dropout "
            "masks must come from its own seed (hydra.launcher.vectorize=false lets the members take turns)"
        )
    if str(cfg.trainer.get("precision", "32")) in ("16", "16-mixed"):
        return "trainer.precision=16-mixed cannot pack: each member would need its own loss scaler"
    if cfg.trainer.get("compile"):
        return "trainer.compile=true cannot pack: the packed step is a vmapped functional call"
    if cfg.get("study") is not None and cfg.study.get("lr_grid"):
        return "study.lr_grid cannot pack: a grid trains each lr in turn inside one run"
    return None


def _has_dropout(cfg: DictConfig) -> bool:
    return float(cfg.model.get("dropout") or 0.0) > 0.0


def _trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _rng_state() -> tuple:
    """torch's global RNG state (and the current GPU's, once CUDA is in use): what dropout draws from."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


class PackedSteps:
    """The meeting point of K member threads: one vmapped forward and backward per optimizer step.

    A member thread calls ``enter()`` first, ``step(...)`` (same arguments as ``train_step``) once
    per step, and ``leave()`` when its training ends; the others then carry on packed without it.
    ``vectorize=False`` runs the members' forward and backward one after another instead: no vmap,
    float32 results equal to separate runs bit for bit, only the process shared. Members may be at
    different steps (a resumed pack): each member's function depends only on its own inputs.
    """

    def __init__(self, members: int, vectorize: bool = True):
        self.vectorize = vectorize
        # Members take turns: only the one holding this lock runs, and it lets go only while it
        # waits for the others' steps. Nothing of two members ever runs at once, which matters:
        # two threads evaluating NHWC convs at once on the CPU gave one of them wrong logits
        # (torch 2.14.1), and datasets' augmentation objects are not made for threads either.
        self._cond = threading.Condition(threading.RLock())
        self._active = members
        self._pending: dict[int, tuple] = {}
        self._results: dict[int, torch.Tensor | BaseException] = {}
        # Each waiting member's RNG stream, advanced by its forward wherever that runs.
        self._rng: dict[int, tuple] = {}

    def enter(self) -> None:
        """A member's thread starts: wait for its turn."""
        self._cond.acquire()

    def leave(self) -> None:
        """A member's training ended (finished, refused or failed); its turn passes on."""
        self._active -= 1
        if self._pending and len(self._pending) >= self._active:
            self._run_pending()
        self._cond.release()

    def __call__(self, model, images, target, loss_fn, optimizer, precision=None) -> torch.Tensor:
        me = threading.get_ident()
        with self._cond:
            self._pending[me] = (model, images, target, loss_fn, optimizer, precision)
            self._rng[me] = _rng_state()
            if len(self._pending) >= self._active:
                self._run_pending()
            else:
                self._cond.wait_for(lambda: me in self._results)
            result = self._results.pop(me)
            _set_rng_state(self._rng.pop(me))  # this member's turn: its own stream again
        if isinstance(result, BaseException):
            raise result
        loss, grads = result
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return loss  # as train_step: the caller stops before any update reaches the weights
        for param, grad in zip(_trainable(model), grads):
            param.grad = grad
        optimizer.step()
        return loss

    def _run_pending(self) -> None:
        """Compute every pending member's loss and gradients (called holding the lock)."""
        pending, self._pending = self._pending, {}
        try:
            results = self._packed_grads(list(pending.values()), list(pending))
        except BaseException as err:  # every waiting member raises it, not only the one that ran it
            results = [err] * len(pending)
        self._results.update(zip(pending, results))
        self._cond.notify_all()

    def _packed_grads(self, members: list[tuple], owners: list[int] | None = None) -> list:
        """Each member's loss and gradients; ``owners``: the members' threads, whose RNG streams
        their forwards draw from when taking turns (None: the process's stream, as in a benchmark)."""
        from torch.func import functional_call, vmap

        models = [m[0] for m in members]
        loss_fn, precision = members[0][3], members[0][5]
        if (
            not self.vectorize
            or len(members) == 1
            or len({(tuple(m[1].shape), tuple(m[2].shape)) for m in members}) > 1
        ):
            # One member after another: the very kernels (and numbers) of separate runs, each
            # forward drawing from its member's RNG stream. Also for a lone member or batches of
            # different shapes.
            results = []
            for me, member in zip(owners or [None] * len(members), members):
                with self._own_stream(me):
                    results.append(self._alone(*member[:4], member[5]))
            return results
        names = [n for n, _ in models[0].named_parameters()]
        buffer_names = [n for n, _ in models[0].named_buffers()]
        # Frozen weights (FCN's fixed bilinear upsampling) stay frozen: no gradient is taken for them.
        params = {
            n: torch.stack([p.detach() for p in ps]).requires_grad_(ps[0].requires_grad)
            for n, ps in zip(names, zip(*(m.parameters() for m in models)))
        }
        buffers = {n: torch.stack([b for b in bs]) for n, bs in zip(buffer_names, zip(*(m.buffers() for m in models)))}

        images = torch.stack([m[1] for m in members])
        target = torch.stack([m[2] for m in members])
        batched_loss = vmap_ready(loss_fn, target)

        def member_loss(p, b, images, target):
            # The first member's module as the function: members take turns, so none of them is
            # using it now, and its train/eval flags are the ones train_mode set for all of them.
            return batched_loss(functional_call(models[0], (p, b), (images,)), target)

        with precision.autocast() if precision is not None else contextlib.nullcontext():
            losses = vmap(member_loss, randomness="error")(params, buffers, images, target)
        grads = torch.autograd.grad(losses.sum(), [p for p in params.values() if p.requires_grad], allow_unused=True)
        out = []
        with torch.no_grad():
            for k, model in enumerate(models):
                for buffer, stacked in zip(model.buffers(), buffers.values()):
                    buffer.copy_(stacked[k])  # running statistics, batch counters
                member_grads = [None if g is None else g[k].clone() for g in grads]
                out.append((losses[k].detach(), member_grads))
        return out

    @contextlib.contextmanager
    def _own_stream(self, member: int | None):
        """Torch's RNG is ``member``'s stream inside, and that stream advances (None: left alone)."""
        if member is None:
            yield
            return
        _set_rng_state(self._rng[member])
        try:
            yield
        finally:
            self._rng[member] = _rng_state()

    @staticmethod
    def _alone(model, images, target, loss_fn, precision):
        """One member by itself: the ordinary forward and backward."""
        model.zero_grad(set_to_none=True)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            loss = loss_fn(model(images), target)
        if not torch.isfinite(loss):
            return loss.detach(), []
        grads = torch.autograd.grad(loss, _trainable(model), allow_unused=True)
        return loss.detach(), list(grads)


class _MemberLog(logging.Filter):
    """Pass only records logged by one member's thread (each run's own log file)."""

    def __init__(self, thread_name: str):
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.thread_name


@contextlib.contextmanager
def run_log(run_dir: str | Path, name: str | None):
    """This thread's log lines also into ``run_dir/name`` (a run trained outside Hydra's own job)."""
    if not name:
        yield
        return
    handler = logging.FileHandler(Path(run_dir) / name)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.addFilter(_MemberLog(threading.current_thread().name))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def vectorize_by_default(cfg: DictConfig) -> bool:
    """vmap where it pays: on a GPU many small kernels become one; on the CPU a grouped conv is no
    faster than the convs it replaces (``segbench bench`` measures both), so there members take
    turns, which also keeps their float32 numbers those of separate runs. A model with dropout
    takes turns everywhere: vmap would have to draw its members' masks from one stream."""
    from segbench.train.distributed import resolve_device

    return resolve_device(str(cfg.trainer.device)).type == "cuda" and not _has_dropout(cfg)


def train_packed(
    cfgs: list[DictConfig],
    run_dirs: list[str | Path],
    log_names: list[str | None] | None = None,
    vectorize: bool | None = None,
) -> list:
    """Train ``cfgs[k]`` into ``run_dirs[k]`` for every k, packed; returns each run's metrics
    (or the exception that ended it, so one diverged seed does not take its pack down).

    ``log_names``: a log file per run (relative to its folder) that the member's lines go to.
    ``vectorize``: one vmapped step for all (None: ``vectorize_by_default``) or members in turn.
    """
    from segbench.train.trainer import train

    vectorize = vectorize_by_default(cfgs[0]) if vectorize is None else vectorize
    reasons = sorted({r for r in (pack_refusal(cfg, vectorize) for cfg in cfgs) if r})
    if reasons:
        raise ValueError(f"cannot pack these runs: {reasons[0]}")
    steps = PackedSteps(len(cfgs), vectorize)
    results: list = [None] * len(cfgs)
    log_names = log_names or [None] * len(cfgs)

    def member(k: int) -> None:
        with run_log(run_dirs[k], log_names[k]):
            steps.enter()
            try:
                results[k] = train(cfgs[k], run_dirs[k], step_fn=steps)
            except BaseException as err:  # noqa: BLE001 (reported per run by the caller)
                results[k] = err
            finally:
                steps.leave()

    threads = [threading.Thread(target=member, args=(k,), name=f"seed-{cfgs[k].seed}") for k in range(len(cfgs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
