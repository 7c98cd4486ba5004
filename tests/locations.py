"""Where the repository and the shared test helpers are, for tests at any depth under tests/."""

import pathlib

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
