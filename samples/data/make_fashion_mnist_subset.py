"""Write a small, balanced Fashion-MNIST subset as PNG files in label folders.

    /usr/bin/python3 samples/data/make_fashion_mnist_subset.py [source_dir] [per_class_train] [per_class_test]

Source: the IDX files of Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist, MIT licence,
Zalando Research). Output: samples/data/fashion-mnist/{train,test}/<label>/<index>.png (28x28 grayscale). The first
N items of each class in file order are taken, so the subset is deterministic. Standard library only.
"""
import gzip
import os
import struct
import sys
import zlib

LABELS = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2049:  # labels
        return list(data[8:8 + count])
    rows, cols = struct.unpack(">II", data[8:16])
    size = rows * cols
    return [data[16 + i * size:16 + (i + 1) * size] for i in range(count)], rows, cols


def png_gray(pixels, width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def export(source, split, prefix, per_class, out_root):
    images, rows, cols = read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"))
    taken = {k: 0 for k in range(10)}
    for index, (image, label) in enumerate(zip(images, labels)):
        if taken[label] >= per_class:
            continue
        folder = os.path.join(out_root, split, LABELS[label])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{index:05d}.png"), "wb") as f:
            f.write(png_gray(image, cols, rows))
        taken[label] += 1
        if all(v >= per_class for v in taken.values()):
            break


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    per_train = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    per_test = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    out_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion-mnist")
    export(source, "train", "train", per_train, out_root)
    export(source, "test", "t10k", per_test, out_root)
    print(f"wrote {per_train} train and {per_test} test images per class to {out_root}")
