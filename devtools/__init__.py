"""Developer tooling: embedded local servers for tests and ``make run``, the worker simulator.

Nothing in this package is imported by the application at runtime: the local launcher starts the
simulator as a subprocess by module path (``python -m devtools.simulator``), and the settings
install this package as an app (for ``manage.py simulate_worker``) only where it exists.
"""
