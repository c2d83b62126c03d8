"""Tab completion for ``segbench``: ``eval "$(segbench completion bash)"`` (add it to ~/.bashrc).

Hydra's own completion line registers the program by ``sys.argv[0]``, which under a subcommand is
"segbench train": bash then binds two commands, and Tab sends ``-sc`` to ``segbench`` itself. This
completes the subcommands, ``group=choice`` from the shipped config folders and the keys of the
default config, reading YAML only (no torch import), so a Tab answers at once.
"""

from __future__ import annotations

BASH = r"""_segbench_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}"
    local word="${line##* }"
    local IFS=$'\n'
    COMPREPLY=($(segbench __complete "${COMP_WORDS[1]}" "$word" "$COMP_CWORD"))
    # bash splits words at "=": hand back only what follows it
    if [[ "$word" == *=* && "${COMP_WORDBREAKS}" == *=* ]]; then
        COMPREPLY=("${COMPREPLY[@]#*=}")
    fi
}
complete -o nospace -o default -F _segbench_complete segbench
"""


def candidates(command: str, word: str, position: int, commands) -> list[str]:
    """What Tab offers for ``word`` at word ``position`` of ``segbench <command> ...``."""
    if position <= 1:
        return [c + " " for c in sorted(commands) if c.startswith(word)]
    if command != "train":
        return []
    from segbench.config import GROUPS, group_options

    groups = {
        **{g: group_options(g) for g in (*GROUPS, "cause")},
        **{f"hydra/{g}": group_options(f"hydra/{g}") for g in ("launcher", "sweeper")},
    }
    key, eq, value = word.partition("=")
    if eq:
        if key in groups:
            return [f"{key}={c} " for c in groups[key] if c.startswith(value)]
        return []
    found = [f"{g}=" for g in groups if g.startswith(word)]
    found += [f"{k}=" for k in _default_keys() if k.startswith(word)]
    found += [f for f in ("-m", "--check", "--cfg", "--help") if f.startswith(word)] if word.startswith("-") else []
    return sorted(dict.fromkeys(found))


def _default_keys() -> list[str]:
    """Dotted keys of the default run's config, from config.yaml and each group's default file."""
    from importlib import resources

    from omegaconf import OmegaConf

    from segbench.config import CONFIG_MODULE
    from segbench.schema import flatten

    root = resources.files(CONFIG_MODULE)
    main = OmegaConf.to_container(OmegaConf.load(str(root / "config.yaml")), resolve=False)
    keys = [k for k in flatten({k: v for k, v in main.items() if k not in ("defaults", "hydra")})]
    for entry in main.get("defaults", []):
        if isinstance(entry, dict):
            ((group, choice),) = entry.items()
            path = root / group / f"{choice}.yaml"
            if choice and path.is_file():
                body = OmegaConf.to_container(OmegaConf.load(str(path)), resolve=False) or {}
                keys += [f"{group}.{k}" for k in flatten({k: v for k, v in body.items() if k != "defaults"})]
    return keys
