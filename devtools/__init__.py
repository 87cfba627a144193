"""Developer tooling: embedded local servers for tests and ``make run``.

Nothing in this package is imported by the application at runtime.
"""
