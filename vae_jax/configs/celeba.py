"""The chapter's CelebA VAE (64x64, BatchNorm) on the original CelebA download, streamed, with a
checkpoint every 500 steps. Needs --data-dir (img_align_celeba/ and list_eval_partition.txt)."""


def get_config() -> dict:
    return dict(model="celeba_vae", dataset="celeb_a", batch_size=64, epochs=10, checkpoint_every=500)
