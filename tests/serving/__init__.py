"""Serving tests. BentoML's home is a temporary folder for the whole session (the
``_bentoml_home`` fixture in tests/conftest.py), so the tests never touch ~/bentoml."""
