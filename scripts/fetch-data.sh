#!/usr/bin/env bash
# Fetches the data sets into data/ (or $DATA_DIR) and verifies them.
#
#   scripts/fetch-data.sh                 # Fashion-MNIST
#   scripts/fetch-data.sh fashion-mnist cifar10
#
# Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package when it
# is installed (or installable: we are root and apt-get exists), otherwise
# from the official download. CIFAR-10 comes from its official binary
# tarball. Checksums are of the decompressed IDX files (Debian recompresses
# the .gz files) and of the CIFAR-10 tarball as published.
set -euo pipefail

data_dir=${DATA_DIR:-data}
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(fashion-mnist)

declare -A FASHION_SHA256=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
FASHION_URL=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com
DEBIAN_FASHION=/usr/share/datasets/fashion-mnist
CIFAR_URL=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
CIFAR_MD5=c32a1d4ab5d03f1284b67883e8d87530

say() { echo "fetch-data: $*" >&2; }

fashion_ok() {
  local dir=$1 name
  for name in "${!FASHION_SHA256[@]}"; do
    [ -f "$dir/$name.gz" ] || return 1
    [ "$(gunzip -c "$dir/$name.gz" | sha256sum | cut -d' ' -f1)" = "${FASHION_SHA256[$name]}" ] || {
      say "$dir/$name.gz: checksum mismatch"; return 1; }
  done
}

fetch_fashion() {
  local dest=$data_dir/fashion-mnist name
  mkdir -p "$dest"
  if fashion_ok "$dest"; then say "$dest: present and verified"; return; fi
  if [ ! -d "$DEBIAN_FASHION" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's dataset-fashion-mnist"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || true
  fi
  if [ -d "$DEBIAN_FASHION" ]; then
    for name in "${!FASHION_SHA256[@]}"; do ln -sf "$DEBIAN_FASHION/$name.gz" "$dest/$name.gz"; done
  else
    for name in "${!FASHION_SHA256[@]}"; do
      say "downloading $name.gz"
      curl -fsSL -o "$dest/$name.gz.part" "$FASHION_URL/$name.gz" && mv "$dest/$name.gz.part" "$dest/$name.gz"
    done
  fi
  fashion_ok "$dest" || { say "Fashion-MNIST in $dest failed verification"; exit 1; }
  say "$dest: verified"
}

fetch_cifar() {
  local dest=$data_dir/cifar-10-batches-bin tarball=$data_dir/cifar-10-binary.tar.gz
  if [ -f "$dest/test_batch.bin" ] && [ -f "$dest/data_batch_5.bin" ]; then say "$dest: present"; return; fi
  mkdir -p "$data_dir"
  if [ ! -f "$tarball" ]; then
    say "downloading CIFAR-10 (binary version, 163 MB)"
    curl -fSL -o "$tarball.part" "$CIFAR_URL" && mv "$tarball.part" "$tarball"
  fi
  [ "$(md5sum "$tarball" | cut -d' ' -f1)" = "$CIFAR_MD5" ] || { say "$tarball: checksum mismatch"; exit 1; }
  tar -xzf "$tarball" -C "$data_dir"
  say "$dest: extracted and verified"
}

for set in "${sets[@]}"; do
  case $set in
    fashion-mnist) fetch_fashion ;;
    cifar10) fetch_cifar ;;
    *) say "unknown data set '$set' (known: fashion-mnist, cifar10)"; exit 2 ;;
  esac
done
