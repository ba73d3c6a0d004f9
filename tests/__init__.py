"""The test suite (a package, so that `tests.conftest` is this folder even when an installed
distribution ships a top-level `tests` package, as tf2onnx 1.17 does)."""
