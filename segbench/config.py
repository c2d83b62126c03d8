"""Composing segbench's Hydra config outside ``@hydra.main``, and one-line errors for bad overrides."""

from __future__ import annotations

from importlib import resources

from segbench.errors import SegbenchError, invalid_choice

CONFIG_MODULE = "segbench.configs"
GROUPS = ("model", "norm", "data", "loss", "optim", "trainer", "logger", "experiment")


def group_options(group: str) -> list[str]:
    """The choices shipped for a config group (``norm`` -> ``["adain", "batch", ...]``)."""
    folder = resources.files(CONFIG_MODULE).joinpath(*group.split("/"))
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The full config for these overrides (no sweeps), as ``segbench train`` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=False)


def parse_overrides(overrides: list[str]):
    """Hydra's parsed ``Override`` objects; a syntax error is one line naming the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for override in overrides:  # one at a time, so the error can say which one
        try:
            parsed.extend(parser.parse_overrides([override]))
        except HydraException as err:
            raise SegbenchError(
                f"cannot parse the override {override!r}: {_first_line(err)}{_quoting_hint(override)}"
            ) from None
    return parsed


def parses(override: str) -> bool:
    """Whether Hydra's override grammar accepts ``override`` as written."""
    try:
        parse_overrides([override])
    except SegbenchError:
        return False
    return True


def _quoting_hint(override: str) -> str:
    key, sep, value = override.partition("=")
    if not sep or value[:1] in ("'", '"') or not any(c in value for c in "=, "):
        return ""
    # Hydra's grammar, not the shell: the value goes in quotes inside the argument.
    return f" (a value holding '=', ',' or spaces goes in quotes: \"{key}='{value}'\")"


def validate_overrides(overrides: list[str]) -> None:
    """Reject bad group choices and unknown keys before Hydra starts, with one line each.

    Sweep overrides (``norm=none,batch``) are checked value by value.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse_overrides(overrides)
    plain = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_delete() and not key.lstrip("~").startswith("hydra"):
            raise SegbenchError(
                f"{key}: removing a setting is not supported; give it a value (or null) or pick another choice instead"
            )
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        if key in GROUPS or key.lstrip("+") in GROUPS:
            group = key.lstrip("+")
            for value in values:
                if value not in group_options(group) and not (group == "experiment" and value == "null"):
                    raise invalid_choice(group, value, group_options(group))
        if not key.startswith("hydra"):
            plain.append(f"{key}={values[0]}")
    try:
        cfg = compose(plain)
    except (HydraException, OmegaConfBaseException) as err:
        raise SegbenchError(_explain(err, plain)) from None
    _check_added_keys(parsed, plain)
    _check_types(cfg, [o for o in plain if o.split("=", 1)[0].lstrip("+~") not in GROUPS])
    _check_study(cfg)
    # Options of a norm are checked by the registry; check them here too, before a long sweep starts.
    from segbench.nn.norms import norm_options

    known = set(norm_options(cfg.norm.name)) | {"name", "cond_channels"}
    unknown = sorted(set(cfg.norm) - known)
    if unknown:
        raise SegbenchError(
            f"norm '{cfg.norm.name}' takes no option {unknown[0]!r}; its options: {', '.join(sorted(known - {'name'}))}"
        )


def _check_added_keys(parsed, plain: list[str]) -> None:
    """``+key=value`` may only fill a setting segbench reads: a typo (``+trainer.max_step``) is refused,
    not carried along unused."""
    from omegaconf import OmegaConf

    added = [
        o
        for o in parsed
        if (o.is_add() or o.is_force_add())
        and not o.get_key_element().lstrip("+").startswith("hydra")
        and o.get_key_element().lstrip("+") not in GROUPS
    ]
    if not added:
        return
    base = compose([o for o in plain if not o.startswith("+")])
    from segbench.schema import flatten

    known = list(flatten(OmegaConf.to_container(base, resolve=False)))
    for override in added:
        key = override.get_key_element().lstrip("+")
        if key not in known and not any(k.startswith(key + ".") for k in known):
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            raise SegbenchError(
                f"+{key}: segbench has no setting {key}"
                + (f"; did you mean {close[0]}?" if close else "; see `segbench train --cfg job`")
            )


def _check_study(cfg) -> None:
    """Split fractions and the lr grid, checked before Hydra makes a run directory."""
    from segbench.data.common import check_split_fractions
    from segbench.schema import lr_grid

    data = cfg.get("data") or {}
    if "val_fraction" in data or "test_fraction" in data:
        check_split_fractions(data.get("val_fraction", 0.0), data.get("test_fraction", 0.0))
    lr_grid(cfg)


def _check_types(cfg, overrides: list[str]) -> None:
    """A number or a flag given as text (``data.batch_size=abc``) is an error naming the key."""
    from omegaconf import OmegaConf

    groups = [
        o for o in (f"{g}={cfg.get(g).get('name')}" for g in ("model", "norm", "loss", "optim")) if "None" not in o
    ]
    defaults = compose(groups)
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        default, given = OmegaConf.select(defaults, key), OmegaConf.select(cfg, key)
        for kind in (bool, int, float):
            if isinstance(default, kind) and isinstance(given, str):
                raise SegbenchError(f"{key}={given!r} must be of type {kind.__name__} (default {default})")


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _explain(err: Exception, overrides: list[str]) -> str:
    """Turn Hydra's 'Key not in struct' into 'norm.foo is not an option of norm=group; valid: ...'."""
    message = _first_line(err)
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in str(err) or key.split(".")[-1] in message:
            group = key.rpartition(".")[0]
            if group:
                try:
                    section = compose([o for o in overrides if o != item]).get(group.split(".")[0])
                    valid = ", ".join(sorted(section.keys())) if hasattr(section, "keys") else ""
                    return f"{key} is not an option of '{group}'; its options: {valid}"
                except Exception:  # noqa: BLE001 - fall back to Hydra's own first line
                    break
    return f"bad override: {message}"
