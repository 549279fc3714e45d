"""Serving tests. BentoML's home (model store, bentos) goes to a temporary folder, set here
before anything imports bentoml, so the tests never touch ~/bentoml."""

import os
import tempfile

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="foresight-bentoml-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
