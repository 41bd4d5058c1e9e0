"""The sizes of the chapter's exercises (`vae-jax experiment NAME --size reduced|full`): reduced is a
tiny run for the tests, full the chapter's 10 epochs of batch 128 with Adam 1e-3."""

# The exercises (vae_jax.experiments.EXPERIMENTS, in the chapter's order; tests/test_experiments.py checks).
EXPERIMENTS = ("beta-vae", "latent-sweep", "cvae", "mse-vs-bce", "kl-annealing")

SIZES = {
    # reduced: batches divide the limits exactly (one compiled shape per step function)
    "reduced": dict(
        epochs=2,
        batch_size=100,
        lr=1e-3,
        train_limit=600,
        test_limit=200,
        iwae_k=20,
        iwae_n=100,
        classifier_epochs=2,
        figures=False,
        grid_samples=16,
        traversal_dims=4,
        traversal_steps=7,
        per_class=10,
        class_cols=5,
    ),
    "full": dict(
        epochs=10,
        batch_size=128,
        lr=1e-3,
        train_limit=None,
        test_limit=None,
        iwae_k=1000,
        iwae_n=1000,
        classifier_epochs=5,
        figures=False,
        grid_samples=64,
        traversal_dims=8,
        traversal_steps=9,
        per_class=100,
        class_cols=10,
    ),
}
