#!/usr/bin/env bash
# Fetches the data sets into data/ (or $DATA_DIR) and verifies them.
#
#   scripts/fetch-data.sh                 # Fashion-MNIST
#   scripts/fetch-data.sh fashion-mnist cifar10 cifar100 mnist kmnist
#
# Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package when it
# is installed (or installable: we are root and apt-get exists), otherwise
# from the official download. CIFAR-10 comes from its official binary
# tarball. Checksums are of the decompressed IDX files (Debian recompresses
# the .gz files) and of the CIFAR-10 tarball as published. MNIST and KMNIST
# come from their official mirrors, CIFAR-100 from its binary tarball, each
# checked against the published MD5 of the downloaded files.
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
CIFAR100_URL=https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz
CIFAR100_MD5=03b5dce01913d631647c71ecec9e9cb8
MNIST_URL=https://ossci-datasets.s3.amazonaws.com/mnist
declare -A MNIST_MD5=(
  [train-images-idx3-ubyte]=f68b3c2dcbeaaa9fbdd348bbdeb94873
  [train-labels-idx1-ubyte]=d53e105ee54ea40749a09fcbcd1e9432
  [t10k-images-idx3-ubyte]=9fb629c4189551a2d022fa330f9573f3
  [t10k-labels-idx1-ubyte]=ec29112dd5afa0611ce80d1b7f02629c
)
KMNIST_URL=http://codh.rois.ac.jp/kmnist/dataset/kmnist
declare -A KMNIST_MD5=(
  [train-images-idx3-ubyte]=bdb82020997e1d708af4cf47b453dcf7
  [train-labels-idx1-ubyte]=e144d726b3acfaa3e44228e80efcd344
  [t10k-images-idx3-ubyte]=5c965bf0a639b31b8f53240b1b52f4d7
  [t10k-labels-idx1-ubyte]=7320c461ea6c1c855c0b718fb2a4b134
)

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

# fetch_tarball DEST TARBALL URL MD5 WHAT FILE...: unless DEST holds every
# FILE, download the tarball (unless present), check its MD5, extract it.
fetch_tarball() {
  local dest=$data_dir/$1 tarball=$data_dir/$2 url=$3 md5=$4 what=$5 file
  shift 5
  local present=1
  for file in "$@"; do [ -f "$dest/$file" ] || present=0; done
  if [ $present = 1 ]; then say "$dest: present"; return; fi
  mkdir -p "$data_dir"
  if [ ! -f "$tarball" ]; then
    say "downloading $what"
    curl -fSL -o "$tarball.part" "$url" && mv "$tarball.part" "$tarball"
  fi
  [ "$(md5sum "$tarball" | cut -d' ' -f1)" = "$md5" ] || { say "$tarball: checksum mismatch"; exit 1; }
  tar -xzf "$tarball" -C "$data_dir"
  say "$dest: extracted and verified"
}

# fetch_idx DIR URL MD5-ARRAY-NAME: the four IDX .gz files of an MNIST-like
# set, each downloaded unless present and checked against its MD5.
fetch_idx() {
  local dest=$data_dir/$1 url=$2 name
  local -n sums=$3
  mkdir -p "$dest"
  for name in "${!sums[@]}"; do
    if [ ! -f "$dest/$name.gz" ]; then
      say "downloading $1/$name.gz"
      curl -fsSL -o "$dest/$name.gz.part" "$url/$name.gz" && mv "$dest/$name.gz.part" "$dest/$name.gz"
    fi
    [ "$(md5sum "$dest/$name.gz" | cut -d' ' -f1)" = "${sums[$name]}" ] || { say "$dest/$name.gz: checksum mismatch"; exit 1; }
  done
  say "$dest: verified"
}

for set in "${sets[@]}"; do
  case $set in
    fashion-mnist) fetch_fashion ;;
    cifar10) fetch_tarball cifar-10-batches-bin cifar-10-binary.tar.gz "$CIFAR_URL" "$CIFAR_MD5" \
      "CIFAR-10 (binary version, 163 MB)" test_batch.bin data_batch_5.bin ;;
    cifar100) fetch_tarball cifar-100-binary cifar-100-binary.tar.gz "$CIFAR100_URL" "$CIFAR100_MD5" \
      "CIFAR-100 (binary version, 161 MB)" train.bin test.bin ;;
    mnist) fetch_idx mnist "$MNIST_URL" MNIST_MD5 ;;
    kmnist) fetch_idx kmnist "$KMNIST_URL" KMNIST_MD5 ;;
    *) say "unknown data set '$set' (known: fashion-mnist, cifar10, cifar100, mnist, kmnist)"; exit 2 ;;
  esac
done
