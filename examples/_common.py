"""Helpers shared by the examples: the app's namespace and the example timeout override."""

from __future__ import annotations

import os
from datetime import timedelta

#: Namespace used when neither ``build_app(namespace=...)`` nor ``STREAMS_NAMESPACE`` gives one.
#: ``scripts/dev.sh`` creates the topics of namespace ``dev``.
DEFAULT_NAMESPACE = "dev"

#: A duration such as ``"3d"``, ``"24h"``, ``"30s"``, or a ``timedelta``.
Duration = str | timedelta


def namespace_from_env(namespace: str | None) -> str:
    """The namespace to use: the argument, else ``STREAMS_NAMESPACE``, else ``dev``."""
    return namespace or os.environ.get("STREAMS_NAMESPACE") or DEFAULT_NAMESPACE


def timeout_from_env(default: Duration) -> Duration:
    """The main timeout of an example: ``EXAMPLE_TIMEOUT`` (e.g. ``30s``) if set, else ``default``."""
    return os.environ.get("EXAMPLE_TIMEOUT") or default
