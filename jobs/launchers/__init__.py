"""Launcher selection by the JOB_LAUNCHER setting."""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from jobs.launchers.base import LaunchError, Launcher, Observation, Phase

__all__ = ["LaunchError", "Launcher", "Observation", "Phase", "get_launcher"]


@lru_cache(maxsize=4)
def _build(name: str) -> Launcher:
    if name == "kubernetes":
        from jobs.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher.from_settings()
    from jobs.launchers.local import LocalLauncher

    return LocalLauncher.from_settings()


def get_launcher(name: str | None = None) -> Launcher:
    return _build(name or settings.JOB_LAUNCHER)
