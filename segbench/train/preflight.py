"""What ``segbench train`` checks before Hydra starts, because Hydra makes the run folder first.

Every job of a sweep is composed and ``prepare``d (numbers, data files, model against input size,
a resumed checkpoint against the model) and the run folder is checked (writable, not in use, not
another run's) before the first file is written. A resume is rebuilt from the run itself: its
saved overrides, plus the ones given now.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from segbench.config import parse_overrides, parses
from segbench.errors import SegbenchError
from segbench.train.checkpoint import resume_hint, resume_path
from segbench.train.restart import restart_count, saved_checkpoint, sweep_state
from segbench.train.search import is_search
from segbench.trust import ALLOWED_TARGETS, ConfigSource, check_config_is_data, compose_with_hydra

# Flags after which Hydra prints something and trains nothing: only the overrides are checked.
SHOW_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc"}


def check_targets(overrides: list[str]) -> None:
    """Refuse an override that names a ``_target_`` (in its key or inside its value) outside the allowlist."""
    for override in parse_overrides(overrides):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and not override.is_discrete_sweep():
            continue  # an interval (an Optuna search): numbers, no target
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            targets = [value] if key.split(".")[-1] == "_target_" else list(_targets_in(value))
            bad = [t for t in targets if str(t) not in ALLOWED_TARGETS]
            if bad:
                raise SegbenchError(
                    f"{key}: refusing _target_={bad[0]!r}; an override may name only Hydra's "
                    "launchers and sweepers (pick them with hydra/launcher=...), never a function"
                )


def _targets_in(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_target_":
                yield item
            else:
                yield from _targets_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _targets_in(item)


def _value(overrides: list[str], key: str) -> str | None:
    """The last value given for ``key`` (as typed), or None."""
    found = None
    for override in parse_overrides(overrides):
        if override.get_key_element().lstrip("+") == key:
            value = None if override.is_sweep_override() else override.value()
            # A parsed string as the user meant it: Hydra's text form escapes spaces ("a\\ b").
            found = value if isinstance(value, str) else override.get_value_element_as_str()
    return found


def _without(overrides: list[str], *keys: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys]


def quote(value: str) -> str:
    """A path as an override value Hydra reads back unchanged."""
    if all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Overrides whose value is a path. Hydra reads "=", "," and spaces in an unquoted value as syntax, and
# a sweep's run folders are named like "7_seed=1603,norm=batch": such a path is quoted for the user.
PATH_KEYS = ("trainer.resume", "hydra.run.dir", "hydra.sweep.dir", "data.root")


def quote_path_values(argv: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` and ``overrides`` with the unquoted path values of ``PATH_KEYS`` quoted for Hydra where
    the bare value would not parse or names a folder that exists; a sweep over paths (``a,b``) is kept."""
    quoted = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key.lstrip("+~") not in PATH_KEYS or value[:1] in ("'", '"') or "${" in value:
            continue
        if quote(value) != value and (not parses(override) or os.path.exists(value)):
            quoted[override] = f"{key}={quote(value)}"
    return [quoted.get(a, a) for a in argv], [quoted.get(o, o) for o in overrides]


def resume_overrides(overrides: list[str], multirun: bool) -> tuple[list[str], Path | None]:
    """For ``trainer.resume=<run>`` (or ``=true`` with ``hydra.run.dir``): the run's saved overrides,
    then the given ones, pointed at the run; and the run folder. Without a resume: unchanged, None."""
    value = _value(overrides, "trainer.resume")
    if value is None or value.lower() in ("false", "null", "none"):
        return overrides, None
    if multirun:
        raise SegbenchError("trainer.resume continues one run; resume a sweep's runs one at a time")
    run_dir_given = _value(overrides, "hydra.run.dir")
    if value.lower() == "true":
        if run_dir_given is None:
            raise SegbenchError(
                "trainer.resume=true continues the run in hydra.run.dir, which was not given; "
                "pass the run instead: trainer.resume=<run dir>"
            )
        run = Path(run_dir_given)
    else:
        run = Path(value)
        if run.is_file():
            if run.parent.name != "checkpoints" or not (run.parent.parent / ".hydra").is_dir():
                return overrides, None  # a checkpoint from elsewhere: a new run continues from it
            run = run.parent.parent
        if run_dir_given is not None and Path(run_dir_given).resolve() != run.resolve():
            raise SegbenchError(
                f"trainer.resume={value} and hydra.run.dir={run_dir_given} name different runs; "
                "a resume continues in the run's own folder (drop hydra.run.dir)"
            )
    resume_path(value, run)  # the run must hold checkpoints/last.pt; the same one-line error as train()
    saved = _saved_overrides(run)
    given = _without(overrides, "trainer.resume", "hydra.run.dir")
    return [*saved, *given, f"hydra.run.dir={quote(str(run))}", "trainer.resume=true"], run


def _saved_overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        saved = list(OmegaConf.to_container(OmegaConf.load(path)))
    except Exception as err:  # noqa: BLE001 - a hand-edited or truncated YAML file
        raise SegbenchError(f"cannot read {path} ({str(err).splitlines()[0]})") from None
    return [
        str(o)
        for o in _without(saved, "trainer.resume", "hydra.run.dir")
        if not str(o).lstrip("+~").startswith("hydra")
    ]


def sweep_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job Hydra's basic sweeper would launch (one job without ``-m``)."""
    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    if not multirun:
        return [plain]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(parse_overrides(plain), None)
    return [job for batch in batches for job in batch]


def preflight(
    argv: list[str], overrides: list[str], source: ConfigSource = ConfigSource(), claim_run: bool = True
) -> tuple[list[str], Path | None]:
    """Check a ``segbench train`` command; return the argv Hydra should see and the resumed run (or None).

    ``claim_run=False`` (``--check``): every check, but the named run folder is neither created nor locked.
    ``source``: another config (``-cp``/``-cd``/``-cn``) gets every check but the choices of
    segbench's own config groups. Raises ``SegbenchError`` (one line) or ``RunFinished``.
    """
    from segbench.config import compose, validate_overrides
    from segbench.io import check_writable
    from segbench.train.prepare import dry_run, prepare
    from segbench.train.rundir import check_unlocked, claim, release

    multirun = "-m" in argv or "--multirun" in argv
    shown = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in SHOW_FLAGS - {"--help", "-h", "--hydra-help"}]
    if multirun and shown:  # Hydra refuses the pair with a traceback
        raise SegbenchError(
            f"{shown[0]} shows one job's config and -m runs a sweep; use one of them "
            "(drop -m to see the config a member gets)"
        )
    check_targets(overrides)
    if multirun:  # sweep members are named by what varies (segbench.train.app.run_name)
        os.environ["SEGBENCH_SWEPT_KEYS"] = ",".join(
            o.get_key_element().lstrip("+~") for o in parse_overrides(overrides) if o.is_sweep_override()
        )
    if not multirun and restart_count() and _value(overrides, "trainer.resume") is None:
        # SLURM requeued this job, or torchrun restarted it: continue the run it had saved.
        folder = named_run_dir(overrides, False)
        if folder is not None and saved_checkpoint(folder) is not None:
            overrides = [*overrides, f"trainer.resume={quote(str(folder))}"]
            argv = [*argv, overrides[-1]]
    resumed_overrides, run = resume_overrides(overrides, multirun)
    if run is not None:
        flags = [a for a in argv if a.startswith("-")]
        argv = [*flags, *resumed_overrides, "hydra.output_subdir=null"]  # keep the saved config as it is
        overrides = resumed_overrides
    if multirun and is_search(overrides):
        return _preflight_search(argv, overrides, source)
    if source.is_default:
        validate_overrides(overrides)
    arms = _compose_arms(overrides, multirun, source)  # each checked: no code, no path outside the run
    if any(a.split("=", 1)[0] in SHOW_FLAGS for a in argv):
        return argv, run
    target = run or named_run_dir(overrides, multirun)
    if target is not None and int(os.environ.get("RANK", 0)) == 0:  # under torchrun rank 0 owns the folder
        check_unlocked(target, "hydra.sweep.dir" if multirun else "hydra.run.dir")
        if run is None and ((target / "checkpoints").is_dir() or (target / "metrics.json").is_file()):
            raise SegbenchError(
                f"hydra.run.dir={target} already holds a run; continue it with "
                f"{resume_hint(target)}, or choose another folder"
            )
    check_writable(target or _output_base(multirun), "hydra.run.dir" if target else "the output folder")
    if multirun and target is not None and _value(overrides, "hydra.sweep.subdir") is None:
        from segbench.train.app import run_name

        found = sweep_state(target, sweep_jobs(overrides, True), run_name, compose).line()
        if found:
            print(f"segbench: {found}")
    seen = set()
    for cfg in arms:
        key = json.dumps({k: v for k, v in _container(cfg).items() if k != "seed"}, sort_keys=True, default=str)
        if key not in seen:  # two arms may compose alike (an override given at its default)
            seen.add(key)
            dry_run(prepare(cfg, run or Path("."), int(os.environ.get("WORLD_SIZE", 1))), cfg)
    if claim_run and target is not None and int(os.environ.get("RANK", 0)) == 0:
        # Before Hydra writes .hydra/: a second run, or a second sweep into the same folder (whose
        # members would share subfolder names with this one's), started now is refused untouched.
        created = not target.exists()
        lock = claim(target, "hydra.sweep.dir" if multirun else "hydra.run.dir")
        if multirun:  # the sweep's process holds it while its members run; a run holds its own in train()
            atexit.register(release, lock, created)
    return argv, run


def _preflight_search(argv: list[str], overrides: list[str], source: ConfigSource) -> tuple[list[str], None]:
    """An Optuna search: its settings checked at both ends of every searched range, as one arm each."""
    from segbench.config import validate_overrides
    from segbench.io import check_writable
    from segbench.train.prepare import dry_run, prepare
    from segbench.train.search import SWEEPER, read_search

    search = read_search(overrides)
    hydra_part = [o for o in overrides if o.startswith("hydra")]
    for job in search.ends():
        plain = [o for o in job if not o.startswith("hydra")]
        if source.is_default:
            validate_overrides(plain)
        for cfg in _compose_arms([*plain, *hydra_part, SWEEPER], False, source):
            dry_run(prepare(cfg, Path("."), int(os.environ.get("WORLD_SIZE", 1))), cfg)
    target = named_run_dir(overrides, True)
    check_writable(target or _output_base(True), "hydra.sweep.dir" if target else "the output folder")
    return argv, None


def _compose_arms(overrides: list[str], multirun: bool, source: ConfigSource) -> list:
    """Each job's config, composed once per arm (seeds do not change what is valid) with Hydra's own
    part, from wherever it comes; refused if it names code; returned without the Hydra part."""
    from omegaconf import OmegaConf

    fixed_hydra = [
        o
        for o in overrides
        if o.lstrip("+~").startswith("hydra") and not any(p.is_sweep_override() for p in parse_overrides([o]))
    ]
    arms = {}
    for job in sweep_jobs(overrides, multirun):
        key = tuple(o for o in job if not o.startswith("seed="))
        if key not in arms:
            full = compose_with_hydra([*job, *fixed_hydra], source)
            check_config_is_data(full)
            cfg = OmegaConf.create(
                {k: v for k, v in OmegaConf.to_container(full, resolve=False).items() if k != "hydra"}
            )
            OmegaConf.set_struct(cfg, True)  # as Hydra hands it to the run: unknown keys are errors
            arms[key] = cfg
    return list(arms.values())


def _container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


def named_run_dir(overrides: list[str], multirun: bool) -> Path | None:
    value = _value(overrides, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    return None if value is None or "${" in value else Path(value)


def _output_base(multirun: bool) -> Path:
    """Where a run without ``hydra.run.dir`` goes (``SEGBENCH_OUTPUT``, else ./outputs or ./multirun)."""
    return Path(os.environ.get("SEGBENCH_OUTPUT", "multirun" if multirun else "outputs"))
