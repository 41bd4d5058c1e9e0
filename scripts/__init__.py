"""Scripts of the project (benchmarks, reference training, reports), importable as modules by the tests."""
