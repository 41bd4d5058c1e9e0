"""The chapter's setting: its VAE (784-400-20) on MNIST, 10 epochs of batch 128, Adam 1e-3 (the
defaults of `train.Config`). Needs --data-dir (the IDX files) or a prepared tfds data_dir."""


def get_config() -> dict:
    return dict(model="vae", dataset="mnist")
