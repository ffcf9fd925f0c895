#!/usr/bin/env bash
# Builds both packages from a fresh checkout: target/debian/*.deb (cargo-deb) and
# target/generate-rpm/*.rpm (cargo-generate-rpm), installing those tools if missing.
#   bash packaging/build.sh [--deb-version VERSION] [--out DIR]
# --deb-version/--out: a package with another version (the upgrade test builds one).
set -euo pipefail
cd "$(dirname "$0")/.."
DEB_VERSION=""
OUT=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --deb-version) DEB_VERSION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "packaging/build.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
command -v cargo-deb > /dev/null || cargo install --locked cargo-deb
command -v cargo-generate-rpm > /dev/null || cargo install --locked cargo-generate-rpm
cargo build --release --locked
# As dh_strip does: no symbols, and no .comment and .note sections (lintian).
strip --remove-section=.comment --remove-section=.note target/release/docker-tls-manager
rm -rf target/assets
target/release/docker-tls-manager generate-assets target/assets > /dev/null
# The license notices of the crates linked into the binary (named by the copyright file).
python3 packaging/third-party.py target/assets/THIRD-PARTY
# The .rpm ships its man pages compressed, as rpmbuild's brp-compress would (cargo-deb
# compresses the .deb's itself).
gzip -9 -n -k target/assets/*.[0-9]
deb_args=(--no-build --no-strip)
[[ -n $DEB_VERSION ]] && deb_args+=(--deb-version "$DEB_VERSION")
[[ -n $OUT ]] && deb_args+=(--output "$OUT")
cargo deb "${deb_args[@]}"
if [[ -z $DEB_VERSION ]]; then
    cargo generate-rpm
fi
