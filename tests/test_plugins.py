"""Launchers and sweepers that come as packages of their own: a missing one is one line naming its install."""

from __future__ import annotations

import importlib.util

import pytest

from tests.test_cli import segbench

HAS_RAY = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None


@pytest.mark.skipif(HAS_RAY, reason="Hydra's Ray launcher is installed here")
@pytest.mark.parametrize("choice", ["ray", "ray_local"])
def test_a_launcher_not_installed_is_one_line_naming_the_extra(choice, tmp_path):
    result = segbench("train", "-m", f"hydra/launcher={choice}", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "segbench: error: hydra/launcher=ray is not installed: pip install 'segbench[ray]' (Hydra's Ray launcher), "
        "then hydra/launcher=ray_local"
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.skipif(not HAS_RAY, reason="Hydra's Ray launcher is an extra: pip install 'segbench[ray]'")
def test_ray_local_composes_a_local_cluster_with_one_core_per_run():
    from segbench.trust import ConfigSource, compose_with_hydra

    cfg = compose_with_hydra(["hydra/launcher=ray_local"], ConfigSource())
    assert cfg.hydra.launcher.ray.init.address is None and cfg.hydra.launcher.ray.remote.num_cpus == 1
