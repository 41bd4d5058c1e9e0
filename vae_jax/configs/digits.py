"""The main job (`vae-jax train` with no options, `make train`): the chapter's VAE (784-400-20) on the
embedded 8x8 digits upsampled to 28x28, long enough (150 epochs of 47 steps) for its samples to look
like digits. No download."""


def get_config() -> dict:
    return dict(model="vae", dataset="digits", epochs=150, batch_size=32)
