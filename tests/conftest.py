"""Fixtures shared by every tier live in plugins, so each tier's folder keeps
its own conftest.py for what only it needs."""

pytest_plugins = [
    "tests.support.cluster_plugin",
    "tests.support.pytest_plugin",
    "tests.tiers",
]
