"""The binarized-MNIST density recipe, second part: 120 epochs on the IWAE bound with k = 10, Adam 5e-4
cosine-decayed to 0, starting from the weights of a `binarized_mnist_nll` run (give it with
--init-from RUN)."""

from vae_jax.configs import binarized_mnist_nll


def get_config() -> dict:
    return dict(binarized_mnist_nll.get_config(), train_k=10, lr=5e-4, epochs=120)
