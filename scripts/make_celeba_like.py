"""Build a synthetic stand-in for the CelebA download, laid out exactly like the original, for tests and benchmarks.

    python scripts/make_celeba_like.py --out DATA/celeba_full                 # 202,599 images, official split
    python scripts/make_celeba_like.py --out DATA/celeba_small --num 300      # small folder for tests

Writes
    OUT/img_align_celeba/000001.jpg ... 202599.jpg   178 wide x 218 high, RGB JPEG, vaguely face-like
    OUT/list_eval_partition.txt                      lines "000001.jpg 0" (0 = train, 1 = valid, 2 = test)

The split follows the official order: the first 162,770 images are train, the next 19,867 valid, the last 19,962
test; a smaller --num scales the three parts proportionally (each at least 1). Image i depends only on (--seed, i),
so the same command gives byte-identical files. Every file is written under a temporary name and renamed, and the
partition file comes last, so an interrupted run never leaves a truncated JPEG under a final name.

Exit code: 0 on success; 2 for bad options (e.g. --out exists and is not empty).
"""

import argparse
import io
import multiprocessing
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 178, 218
OFFICIAL_SPLIT = (162770, 19867, 19962)  # train, valid, test; 202,599 in all
IMG_DIR = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
CHUNK = 500  # images per task handed to a worker
GRAIN = 7 + 3  # peak-to-peak noise: luminance 0..7 plus colour 0..3

_GRID = None  # (y as Hx1, x as 1xW) in [0, 1], float32, built once per process


def split_sizes(num):
    """Sizes of (train, valid, test) for `num` images, proportional to the official split, each at least 1."""
    total = sum(OFFICIAL_SPLIT)
    valid = max(1, round(num * OFFICIAL_SPLIT[1] / total))
    test = max(1, round(num * OFFICIAL_SPLIT[2] / total))
    return num - valid - test, valid, test


def file_name(index):
    """6-digit 1-based name, as in CelebA: index 0 -> '000001.jpg'."""
    return f"{index + 1:06d}.jpg"


def _grid():
    global _GRID
    if _GRID is None:
        _GRID = (
            np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None],
            np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :],
        )
    return _GRID


def _colour(rng, lo, hi):
    """A random RGB tuple with each channel uniform in [lo, hi]."""
    return tuple(int(c) for c in rng.integers(lo, hi + 1, size=3))


def _skin(rng):
    """A random skin tone, from pale to dark, with a little jitter."""
    t = rng.random()
    base = np.array([235, 200, 175]) * (1 - t) + np.array([110, 70, 50]) * t
    return tuple(int(c) for c in np.clip(base + rng.integers(-12, 13, size=3), 0, 255))


def background(rng):
    """A smooth two-colour linear gradient in a random direction, HxWx3 uint8."""
    yy, xx = _grid()
    angle = rng.uniform(0, 2 * np.pi)
    a, b = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    lo = min(a, 0) + min(b, 0)  # t = a*x + b*y spans [lo, lo + |a| + |b|] over the unit square
    scale = np.float32(1 / (abs(a) + abs(b)))
    c0 = np.array(_colour(rng, 20, 235), np.float32)
    dc = np.array(_colour(rng, 20, 235), np.float32) - c0
    t = (xx * a + (yy * b - lo)) * scale  # HxW by broadcasting
    out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    for c in range(3):  # per channel: broadcasting over a trailing axis of 3 is several times slower
        out[..., c] = t * dc[c] + c0[c]
    return out


def _ellipse(draw, cx, cy, rx, ry, fill):
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def draw_face(img, rng):
    """Hair, neck, shoulders, face, eyes, brows, nose and mouth at jittered positions (aligned-CelebA-like)."""
    d = ImageDraw.Draw(img)
    cx = WIDTH / 2 + rng.uniform(-6, 6)
    cy = HEIGHT * 0.54 + rng.uniform(-6, 6)
    rx, ry = rng.uniform(38, 50), rng.uniform(52, 64)
    skin, hair = _skin(rng), _colour(rng, 10, 140)
    _ellipse(d, cx, HEIGHT + 30, rng.uniform(70, 95), 75, _colour(rng, 0, 255))  # shoulders
    d.rectangle((cx - rx * 0.45, cy + ry * 0.6, cx + rx * 0.45, HEIGHT), fill=skin)  # neck
    hair_ry = ry + rng.uniform(8, 30)
    _ellipse(d, cx, cy - rng.uniform(8, 18), rx + rng.uniform(6, 20), hair_ry, hair)  # hair behind the face
    _ellipse(d, cx, cy, rx, ry, skin)  # face
    ey = cy - ry * rng.uniform(0.12, 0.22)
    dx, erx, ery = rx * rng.uniform(0.36, 0.46), rng.uniform(6, 9), rng.uniform(3, 5)
    iris = _colour(rng, 20, 120)
    for sx in (-1, 1):
        ex = cx + sx * dx
        _ellipse(d, ex, ey, erx, ery, (240, 240, 235))  # eye white
        _ellipse(d, ex + rng.uniform(-1.5, 1.5), ey, ery * 0.9, ery * 0.9, iris)  # iris
        bw = erx * 1.3
        d.line((ex - bw, ey - ery - 5, ex + bw, ey - ery - 6 + sx), fill=hair, width=3)  # eyebrow
    nose_y = cy + ry * rng.uniform(0.15, 0.25)
    shade = tuple(max(0, c - 40) for c in skin)
    d.line((cx, ey + 4, cx - 3, nose_y, cx + 3, nose_y), fill=shade, width=2)  # nose
    my = cy + ry * rng.uniform(0.45, 0.58)
    mouth = (int(rng.integers(120, 200)), int(rng.integers(40, 90)), int(rng.integers(50, 100)))
    _ellipse(d, cx, my, rx * rng.uniform(0.3, 0.42), rng.uniform(2.5, 7), mouth)  # mouth


def grain(rng):
    """Mild sensor-like noise, HxWx3 uint8 in 0..GRAIN: mostly luminance (same in all channels), a little colour."""
    lum = np.frombuffer(rng.bytes(HEIGHT * WIDTH), np.uint8) & 7
    col = np.frombuffer(rng.bytes(HEIGHT * WIDTH * 3), np.uint8) & 3
    return (np.repeat(lum, 3) + col).reshape(HEIGHT, WIDTH, 3)


def make_image(seed, index):
    """The RGB image for (seed, index) as a HxWx3 uint8 array; deterministic."""
    rng = np.random.default_rng([seed, index])
    img = Image.fromarray(background(rng))
    draw_face(img, rng)
    arr = np.asarray(img, dtype=np.int16)
    arr += grain(rng)
    arr -= GRAIN // 2  # zero-mean
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def encode_jpeg(arr, quality):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_atomic(path, data):
    """Write bytes under a temporary name in the same folder, then rename onto `path`."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_range(job):
    """Worker: write images [start, stop) into img_dir; return the bytes written."""
    img_dir, seed, quality, start, stop = job
    total = 0
    for i in range(start, stop):
        data = encode_jpeg(make_image(seed, i), quality)
        write_atomic(os.path.join(img_dir, file_name(i)), data)
        total += len(data)
    return total


def partition_text(num):
    """Contents of list_eval_partition.txt for `num` images."""
    sizes = split_sizes(num)
    labels = [part for part, n in enumerate(sizes) for _ in range(n)]
    return "".join(f"{file_name(i)} {label}\n" for i, label in enumerate(labels))


def write_images(img_dir, num, seed, quality, workers):
    """Write all images, in chunks, with `workers` processes (in-process when 1); return the bytes written."""
    jobs = [(img_dir, seed, quality, s, min(s + CHUNK, num)) for s in range(0, num, CHUNK)]
    if workers == 1:
        return sum(map(write_range, jobs))
    with multiprocessing.Pool(workers) as pool:
        return sum(pool.imap_unordered(write_range, jobs))


def check_args(a):
    """One error line for bad options, else None."""
    if os.path.exists(a.out) and (not os.path.isdir(a.out) or os.listdir(a.out)):
        return f"--out {a.out} exists and is not empty; refusing to write into it"
    if not 3 <= a.num <= 999999:
        return f"--num must be between 3 and 999999 (one image per part, 6-digit names), got {a.num}"
    if a.workers < 1:
        return f"--workers must be at least 1, got {a.workers}"
    if not 1 <= a.quality <= 100:
        return f"--quality must be between 1 and 100, got {a.quality}"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    ap.add_argument("--num", type=int, default=sum(OFFICIAL_SPLIT), help="number of images (default: 202599)")
    ap.add_argument("--seed", type=int, default=0, help="images depend only on (seed, index)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    a = ap.parse_args(argv)
    error = check_args(a)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    img_dir = os.path.join(a.out, IMG_DIR)
    os.makedirs(img_dir, exist_ok=True)
    total = write_images(img_dir, a.num, a.seed, a.quality, min(a.workers, -(-a.num // CHUNK)))
    text = partition_text(a.num).encode()
    write_atomic(os.path.join(a.out, PARTITION_FILE), text)
    total += len(text)
    wall = time.perf_counter() - t0
    sizes = "/".join(str(n) for n in split_sizes(a.num))
    print(
        f"{a.num} images (train/valid/test {sizes}), {total} bytes ({total / 2**20:.1f} MiB) in files, "
        f"{wall:.1f} s -> {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
