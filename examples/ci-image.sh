#!/usr/bin/env bash
# A CI job assembling a root filesystem in layers with strata, exporting
# each layer as an OCI layer tarball, and rebuilding the image elsewhere
# (here: a second store) from those tarballs. Run as root.
# Needs busybox (Debian: busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."
source link/toolchain.sh  # the musl target (see .cargo/config.toml), else glibc
cargo build --release --quiet
bin=$PWD/target/$STRATA_TARGET/release/strata
work=$(mktemp -d /tmp/strata-ci.XXXXXX)
trap 'for m in "$work"/mnt/*; do umount -l "$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
export STRATA_ROOT=$work/build        # the build machine's store
export SOURCE_DATE_EPOCH=0            # reproducible layers
mkdir -p "$work/layers"
set -x

# Layer 1: busybox and the directory skeleton.
$bin prepare base-work --mount "$work/mnt/base"
mkdir -p "$work"/mnt/base/{bin,etc,tmp,root}
cp "$(command -v busybox)" "$work/mnt/base/bin/busybox"
for applet in sh ls cat echo; do ln -s busybox "$work/mnt/base/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/mnt/base/etc/passwd"
$bin commit base base-work --label layer=1

# Layer 2: the application.
$bin prepare app-work base --mount "$work/mnt/app"
printf '#!/bin/sh\necho "hello from the app"\n' > "$work/mnt/app/bin/hello"
chmod 755 "$work/mnt/app/bin/hello"
rm "$work/mnt/app/etc/passwd"          # becomes a whiteout in the layer
$bin commit app app-work --label layer=2

# Export both layers (gzip), with their digests as JSON.
$bin diff base --compression gzip --output-file "$work/layers/1.tar.gz" -o json
$bin diff app --compression gzip --output-file "$work/layers/2.tar.gz" -o json

# Elsewhere: rebuild the chain from the tarballs and run the result.
export STRATA_ROOT=$work/deploy
$bin apply base < "$work/layers/1.tar.gz"
$bin apply app base "$work/layers/2.tar.gz"
$bin view run app --mount "$work/mnt/run"
chroot "$work/mnt/run" /bin/hello
test ! -e "$work/mnt/run/etc/passwd"
$bin tree
