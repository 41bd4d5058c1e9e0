"""Markers for the test run (registered in pyproject.toml), applied here at collection time so that
the test files stay as they are:

- `slow`: every item whose node id starts with an entry of SLOW below (plain prefix match, so an
  entry ending in `.py` is a whole module and `::test_x` also covers `::test_x[...]` and `::test_x_y`).
  `make test-fast` runs `-m "not slow"`. Chosen from one `--durations` run of the full suite.
- `needs_data`: every item with a skipif whose reason mentions VAE_DATA_DIR (the files' own
  `needs_data` skipifs). Tests that skip from inside a fixture or the body are not seen.
- `parity`: every item of parity_tests/ (parity_tests/conftest.py applies it, with `needs_data`
  there, so that `pytest parity_tests` alone is marked too).

This hook sees every collected item, parity_tests/ included when both folders are collected (as
`make test` and `make test-fast` do), so SLOW may name parity_tests items as well.
"""

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent

# Node-id prefixes (relative to the repository root). Chosen from one `--durations` run of the full
# suite on the shared 2-core machine (1200 s, load ~4): these make up ~85% of its time.
_PARITY_MODELS = [  # run_case/run_adam cache per case, so a case is slow in all four tests or none
    f"parity_tests/test_models.py::{test}[{model}"
    for test in ("test_forward", "test_loss", "test_gradients", "test_adam")
    for model in ("ConvVAE", "CelebAVAE")  # "[ConvVAE" covers ConvVAE28 too
]
SLOW = (
    # end-to-end: training runs, subprocesses, kills and resumes (whole modules)
    "tests/test_train.py",
    "tests/test_experiments.py",
    "tests/test_reliability.py",
    "tests/test_multiprocess.py",
    "tests/test_crash_safety.py",
    "tests/test_compare_curves.py",
    "tests/test_streaming.py",
    "tests/test_multidevice.py",
    # the oneDNN kernels at the chapter's layer shapes, batch 128, eager and jit (~95 s); the
    # oneDNN parity pitfall cases (parity_tests/test_pitfalls.py) stay in test-fast
    "tests/test_onednn_conv.py",
    # single slow tests in otherwise quick modules
    "tests/test_input_pipeline.py::test_real_prepare_tfds_mnist_matches_idx",
    "tests/test_figures.py::test_make_figures_passes_labels_mu_and_logvar",
    "tests/test_bad_input.py::test_resume_with_other_options",
    "tests/test_bad_input.py::test_resume_names_every_differing_option_at_once",
    "tests/test_bad_input.py::test_resume_needs_only_the_workdir",
    "tests/test_bad_input.py::test_image_folder_with_a_corrupt_image",
    "tests/test_bad_input.py::test_export_of_a_run_whose_checkpoint_data_is_damaged",
    # the hand-written conv forms (an XLA compile each); the lax-form cases stay in test-fast
    "tests/test_conv_forms.py::test_conv_s1_matmul_equals_lax_convolution",
    "tests/test_conv_forms.py::test_subpixel_equals_conv_transpose[matmul",
    "tests/test_conv_forms.py::test_space_to_depth_equals_conv[matmul",
    "tests/test_conv_forms.py::test_two_conv_forms_in_one_process_agree",
    "tests/test_conv_forms.py::test_batchnorm_impl_is_validated_and_follows_the_model_form",
    "tests/test_device_check.py",  # a bash script that starts JAX twice
    # parity of the conv models and CelebAVAE (the MLP models stay in test-fast)
    *_PARITY_MODELS,
    "parity_tests/test_conversion.py::test_flax_torch_flax_is_identity[ConvVAE]",
    "parity_tests/test_conversion.py::test_flax_torch_flax_is_identity[CelebAVAE]",
)


def _needs_data(item) -> bool:
    """A skipif on the item (function, class or module) whose reason mentions VAE_DATA_DIR."""
    return any("VAE_DATA_DIR" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
        if item.path.resolve().is_relative_to(_HERE) and _needs_data(item):
            item.add_marker(pytest.mark.needs_data)
