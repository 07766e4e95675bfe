#!/usr/bin/env bash
# Installs the real data the benchmarks use (not the tests, which need nothing): Debian's Fashion-MNIST
# (dataset-fashion-mnist, MIT licence, 31 MB, IDX files under /usr/share/datasets/fashion-mnist).
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST already installed in /usr/share/datasets/fashion-mnist"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq dataset-fashion-mnist
ls -l /usr/share/datasets/fashion-mnist
