#!/usr/bin/env bash
# Vendors the dashboard's charting library (uPlot) into the package's static
# files, from npm at a pinned version whose tarball must match a pinned
# sha512 integrity (the same value npm's lockfiles record). The result is
# committed, so running Headwater never needs the network; run this only to
# change the version (update VERSION and INTEGRITY together).
set -euo pipefail

NAME=uplot
VERSION=1.6.32
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/src/headwater/api/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$NAME@$VERSION" >/dev/null)
tarball="$work/$NAME-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$INTEGRITY" ]; then
  echo "integrity mismatch for $NAME@$VERSION: expected $INTEGRITY, got $actual" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
cp "$work/package/dist/uPlot.esm.js" "$dest/uPlot.esm.js"
cp "$work/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$work/package/LICENSE" "$dest/uPlot.LICENSE"
echo "$NAME@$VERSION $INTEGRITY" > "$dest/VERSIONS"
echo "vendored $NAME@$VERSION into ${dest#"$root"/}"
