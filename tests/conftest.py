"""Test configuration: real servers are started once per session (see tests/servers.py)."""
from __future__ import annotations

pytest_plugins = ["tests.fixtures"]

# The test environment (tests/environment.py) and the servers are set up by the tests.servers plugin,
# which pytest.ini loads before pytest-django imports the settings.
