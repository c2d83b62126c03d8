"""Config folders are data, not code: what a composed config may name before Hydra runs it.

Hydra instantiates every ``_target_`` under ``hydra.callbacks``, launchers and sweepers, and hands
``hydra.job_logging`` to ``logging.config.dictConfig`` (whose ``()`` key calls any factory and
whose file handlers write anywhere). A config reaches segbench by overrides, ``-cp``/``-cd``/``-cn``,
``hydra.searchpath`` or an experiment file; each route is composed here with Hydra's own config and
checked the same way, so a folder someone shared cannot run code or write outside the run folder.
``--experimental-rerun`` unpickles a file, which is code too: refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from segbench.errors import SegbenchError

# Hydra's launchers and sweepers (and segbench's packed launcher): the only ``_target_`` a config may name.
ALLOWED_TARGETS = frozenset(
    {
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.segbench_packed_launcher.packed_launcher.PackedLauncher",
        "hydra_plugins.segbench_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
    }
)
# Launchers and sweepers that come with a package of their own: how to get them.
PLUGIN_HINTS = {
    "hydra/launcher/ray": "pip install 'segbench[ray]' (Hydra's Ray launcher), then hydra/launcher=ray_local",
    "hydra/launcher/ray_local": "pip install 'segbench[ray]' (Hydra's Ray launcher)",
    "hydra/sweeper/optuna": "pip install 'segbench[optuna]'",
}
LOG_HANDLER_CLASSES = frozenset({"logging.StreamHandler", "logging.FileHandler", "logging.NullHandler"})
RUN_FOLDER_PREFIXES = ("${hydra.runtime.output_dir}/", "${hydra:runtime.output_dir}/")
APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train")  # where @hydra.main is declared


@dataclass(frozen=True)
class ConfigSource:
    """Where ``segbench train`` reads its config from: segbench's own, or ``-cp``/``-cd``/``-cn``."""

    config_path: str | None = None  # -cp: a folder (absolute, relative to segbench/train, file:// or pkg://)
    config_name: str = "config"  # -cn
    config_dir: str | None = None  # -cd: a folder added to the search path

    @property
    def is_default(self) -> bool:
        return self.config_path is None and self.config_dir is None and self.config_name == "config"

    def search_overrides(self) -> list[str]:
        if self.config_dir is None:
            return []
        folder = os.path.abspath(self.config_dir)
        if not os.path.isdir(folder):
            raise SegbenchError(f"--config-dir {self.config_dir}: no such folder")
        return [f"hydra.searchpath=[file://{folder}]"]


def config_source(argv: list[str]) -> ConfigSource:
    """The config flags of a ``segbench train`` command line; ``--experimental-rerun`` refused."""
    values: dict[str, str] = {}
    names = {
        "--config-path": "config_path",
        "-cp": "config_path",
        "--config-name": "config_name",
        "-cn": "config_name",
        "--config-dir": "config_dir",
        "-cd": "config_dir",
    }
    i = 0
    while i < len(argv):
        flag, has_value, value = argv[i].partition("=")
        if flag == "--experimental-rerun":
            raise SegbenchError(
                "--experimental-rerun loads a pickle, which can run code; re-run from the run's "
                "saved overrides instead: segbench train trainer.resume=<run dir>"
            )
        if flag in names:
            if not has_value:
                if i + 1 >= len(argv):
                    raise SegbenchError(f"{flag} needs a value")
                i, value = i + 1, argv[i + 1]
            values[names[flag]] = value
        i += 1
    return ConfigSource(**values)


def compose_with_hydra(overrides: list[str], source: ConfigSource):
    """The full config, Hydra's own part included, as ``segbench train`` would run it; a YAML or
    composition error is one line (file, line and column for YAML)."""
    import yaml
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    path = source.config_path or "pkg://segbench.configs"
    GlobalHydra.instance().clear()
    try:
        if path.startswith("pkg://"):
            init = initialize_config_module(path[len("pkg://") :], version_base="1.3")
        else:
            folder = path[len("file://") :] if path.startswith("file://") else path
            folder = folder if os.path.isabs(folder) else os.path.join(APP_DIR, folder)
            if not os.path.isdir(folder):
                raise SegbenchError(f"--config-path {path}: no such folder ({os.path.normpath(folder)})")
            init = initialize_config_dir(os.path.normpath(folder), version_base="1.3")
        with init:
            return compose(
                source.config_name, overrides=[*source.search_overrides(), *overrides], return_hydra_config=True
            )
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark else ""
        raise SegbenchError(f"YAML error: {where}{err.problem or err.context}") from None
    except (HydraException, OmegaConfBaseException, ImportError, ValueError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        missing = next(
            (group for group in PLUGIN_HINTS if f"find '{group}'" in first or f"load '{group}'" in first), None
        )
        if missing:
            group, choice = missing.rsplit("/", 1)
            raise SegbenchError(f"{group}={choice} is not installed: {PLUGIN_HINTS[missing]}") from None
        raise SegbenchError(f"cannot compose the config: {first}") from None
    finally:
        GlobalHydra.instance().clear()


def check_config_is_data(cfg) -> None:
    """Refuse, in one line, a config that would run code or write outside the run folder."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False)
    for key, target in _targets(tree, ""):
        if str(target) not in ALLOWED_TARGETS:
            raise SegbenchError(
                f"{key}: refusing _target_={target!r}; a config may name only Hydra's launchers "
                "and sweepers (pick them with hydra/launcher=...), never a function"
            )
    hydra = tree.get("hydra") or {}
    for section in ("job_logging", "hydra_logging"):
        _check_logging(hydra.get(section) or {}, f"hydra.{section}")
    subdir = hydra.get("output_subdir")
    if subdir is not None and (os.path.isabs(str(subdir)) or ".." in str(subdir).replace("\\", "/").split("/")):
        raise SegbenchError(
            f"hydra.output_subdir={subdir!r} leaves the run folder; give a name inside it (default .hydra) or null"
        )


def _targets(node, prefix: str):
    if isinstance(node, dict):
        for key, item in node.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_":
                yield where, item
            else:
                yield from _targets(item, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _targets(item, f"{prefix}[{index}]")


def _check_logging(section: dict, name: str) -> None:
    """Logging configs may use the standard handlers, writing files only inside the run folder."""
    for kind in ("handlers", "formatters", "filters", "loggers", "root"):
        for key, entry in _entries(section.get(kind)):
            if isinstance(entry, dict) and "()" in entry:
                raise SegbenchError(
                    f"{name}.{kind}.{key}: refusing a '()' factory (it calls code); use a standard handler class"
                )
    for key, handler in _entries(section.get("handlers")):
        if not isinstance(handler, dict):
            continue
        cls = handler.get("class")
        if cls is not None and cls not in LOG_HANDLER_CLASSES:
            raise SegbenchError(
                f"{name}.handlers.{key}: refusing class={cls!r}; valid: {', '.join(sorted(LOG_HANDLER_CLASSES))}"
            )
        filename = handler.get("filename")
        if filename is not None and not (str(filename).startswith(RUN_FOLDER_PREFIXES) and ".." not in str(filename)):
            raise SegbenchError(
                f"{name}.handlers.{key}.filename={filename!r} writes outside the run folder; "
                "log files go to ${hydra.runtime.output_dir}/<name>"
            )


def _entries(node):
    return node.items() if isinstance(node, dict) else ()
