#!/usr/bin/env bash
# strata's main job on a real, temporary store: build a root filesystem in
# two layers, mount, write, commit, view, list. Run as root (it mounts).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run it as root, it mounts (sudo bash $0)" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
source link/toolchain.sh  # the musl target (see .cargo/config.toml), else glibc
cargo build --release --quiet
strata() { "./target/$STRATA_TARGET/release/strata" --root "$store" "$@"; }

work=$(mktemp -d /tmp/strata-quickstart.XXXXXX)
store=$work/store
cleanup() {
    for m in "$work"/mnt/*; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
set -x

strata init                                   # overlay where the kernel allows, else native
strata prepare base-work --mount "$work/mnt/base"
mkdir -p "$work/mnt/base/etc"
echo "hello from the base layer" > "$work/mnt/base/etc/motd"
strata commit base base-work --label stage=base  # unmounts, freezes as `base`

strata prepare app-work base --mount "$work/mnt/app"
echo "app layer" > "$work/mnt/app/app.txt"
rm "$work/mnt/app/etc/motd"                   # deleted in the child only
strata commit app app-work

strata view look app --mount "$work/mnt/look" # read-only view of the chain
ls -l "$work/mnt/look" "$work/mnt/look/etc"
cat "$work/mnt/look/app.txt"
strata view look-base base
strata mounts look-base
strata ls
strata tree
strata usage
strata info app --json
strata rm -r -f base                          # unmount and remove everything
strata ls
