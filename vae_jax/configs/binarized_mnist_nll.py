"""The binarized-MNIST density recipe, first part: grayscale MNIST binarized afresh at each step, tested
on the statically binarized split, 250 epochs with a cosine-decayed learning rate, and the
importance-sampled NLL (k = 5000) at the end. Needs --data-dir (MNIST IDX files and the .amat files).
The second part (`binarized_mnist_iwae`) fine-tunes this run on the IWAE bound."""


def get_config() -> dict:
    return dict(
        model="vae",
        dataset="mnist",
        binarize="dynamic",
        test_dataset="binarized_mnist",
        epochs=250,
        lr_schedule="cosine",
        iwae_k=5000,
    )
