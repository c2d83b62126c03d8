"""What an Optuna search (``hydra/sweeper=optuna``) varies, read from its overrides before it starts.

A search tunes one arm: ``optim.lr='tag(log, interval(1e-4, 1e-2))'`` on the command line (or
``hydra.sweeper.params`` in a config) is searched, ``seed=0,1`` lists the seeds every trial trains
(the seed is not a hyperparameter), and anything else that lists values is refused, since choosing a
norm on val is the comparison a study makes on test with paired seeds. Shared by the sweeper
(``hydra_plugins.segbench_optuna_sweeper``) and by ``segbench train``'s checks before Hydra starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segbench.errors import SegbenchError

SWEEPER = "hydra/sweeper=optuna"
GRAMMAR = (
    "e.g. optim.lr='tag(log, interval(1e-4, 1e-2))', optim.weight_decay='interval(0, 1e-3)', "
    "model.width='choice(8, 16)'"
)


@dataclass
class Search:
    fixed: list[str] = field(default_factory=list)  # every trial's overrides
    seeds: list[str] = field(default_factory=list)  # trained by every trial; [] = the config's seed
    space: dict = field(default_factory=dict)  # key -> optuna distribution

    def ends(self) -> list[list[str]]:
        """Two override lists, every searched key at its low end, then at its high end: what is checked
        (composed, dry-run) before the first trial, as a plain sweep checks each of its arms."""
        seed = [f"seed={self.seeds[0]}"] if self.seeds else []
        return [[*self.fixed, *(f"{k}={_ends(d)[pick]!r}" for k, d in self.space.items()), *seed] for pick in (0, -1)]


def _ends(dist) -> list:
    return list(getattr(dist, "choices", None) or (dist.low, dist.high))


def is_search(overrides: list[str]) -> bool:
    return any(o.replace(" ", "") == SWEEPER for o in overrides)


def distribution(key: str, text: str):
    """An Optuna distribution from one override in Hydra's sweep grammar; None for a fixed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors are many classes
        raise SegbenchError(
            f"{key}={text!r} is not Hydra's sweep grammar ({str(err).splitlines()[0]}); {GRAMMAR}"
        ) from None
    return _from_override(override)


def _from_override(override):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value = override.get_key_element(), override.value()
    if isinstance(value, IntervalSweep):
        low, high, log_scale = value.start, value.end, "log" in value.tags
        if low >= high:
            raise SegbenchError(f"{key}: interval({low}, {high}) is empty; give the low end first")
        if "int" in value.tags or (isinstance(low, int) and isinstance(high, int)):
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return CategoricalDistribution(list(override.sweep_iterator()))
    return None


def read_search(arguments: list[str], params: dict | None = None) -> Search:
    """Split a search's overrides (and the sweeper's ``params``) into fixed, seeds and the space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from segbench.config import GROUPS

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SegbenchError(
            "hydra/sweeper=optuna needs Optuna: pip install 'segbench[optuna]' (or pip install optuna)"
        ) from None
    search = Search()
    for key, text in (params or {}).items():
        found = distribution(str(key), str(text))
        if found is None:
            raise SegbenchError(
                f"hydra.sweeper.params.{key}={text!r} is one value, not a search space; set it on "
                f"the command line instead ({GRAMMAR})"
            )
        search.space[str(key)] = found
    for override in OverridesParser.create().parse_overrides([a for a in arguments if not a.startswith("hydra")]):
        key = override.get_key_element().lstrip("+~")
        if key == "seed" and _from_override(override) is not None and not override.is_discrete_sweep():
            raise SegbenchError(
                "seed may not be searched: it is not a hyperparameter; list the seeds every trial "
                "trains (seed=0,1) and a trial scores their mean"
            )
        if key == "seed":
            search.seeds = (
                [str(s) for s in override.sweep_string_iterator()]
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
        elif override.is_sweep_override() and (key in GROUPS or key.split("/")[0] in GROUPS):
            raise SegbenchError(
                f"{override.input_line}: an Optuna search tunes one arm; fix {key} (one search per "
                "arm, then compare the arms on fresh seeds) and search its hyperparameters"
            )
        elif override.is_sweep_override():
            if key in search.space:
                raise SegbenchError(f"{key} is searched both on the command line and in hydra.sweeper.params")
            search.space[key] = _from_override(override)
        else:
            search.fixed.append(override.input_line)
    search.fixed += [a for a in arguments if a.startswith("hydra") and a.replace(" ", "") != SWEEPER]
    if not search.space:
        raise SegbenchError(f"an Optuna search needs something to search: {GRAMMAR}")
    if "seed" in search.space:
        raise SegbenchError(
            "seed may not be searched: it is not a hyperparameter; list the seeds every trial "
            "trains (seed=0,1) and a trial scores their mean"
        )
    _check_ends(search)
    return search


def _check_ends(search: Search) -> None:
    """The ends of a range must be valid values themselves (optim.lr > 0, ...)."""
    from segbench.schema import RULES

    for key, dist in search.space.items():
        rule = RULES.get(key)
        for end in _ends(dist):
            problem = rule.problem(end) if rule else None
            if problem:
                raise SegbenchError(f"the search of {key} reaches {key}={end!r}, which {problem}")
