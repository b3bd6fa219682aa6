# Sourced by .ci/run, examples/*.sh and bench/run before they build strata.
#
# strata builds for x86_64-unknown-linux-musl (.cargo/config.toml): the Rust
# target from rustup, and Debian's musl-tools for the C parts. This installs
# what is missing (as root, for the packages), and where the target cannot be
# had, builds for glibc instead (CARGO_BUILD_TARGET): the same code, started
# by glibc, slower to start (docs/benchmarks.md). Sets STRATA_TARGET to the
# target built for.
STRATA_TARGET=${CARGO_BUILD_TARGET:-x86_64-unknown-linux-musl}
if [[ $STRATA_TARGET == x86_64-unknown-linux-musl ]]; then
    if ! command -v musl-gcc >/dev/null && [[ $(id -u) == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1 ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; } ||
            true
    fi
    if ! command -v musl-gcc >/dev/null ||
        ! { rustup target list --installed 2>/dev/null | grep -qx "$STRATA_TARGET" ||
            rustup target add "$STRATA_TARGET"; }; then
        echo "no musl toolchain (rustup's $STRATA_TARGET, musl-gcc): building for glibc" >&2
        STRATA_TARGET=x86_64-unknown-linux-gnu
    fi
fi
export CARGO_BUILD_TARGET=$STRATA_TARGET STRATA_TARGET
