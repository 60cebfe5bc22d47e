#!/usr/bin/env bash
# Builds vikingfs_VERSION_ARCH.deb: release binaries with the Swift runtime linked in statically (so the
# package runs without /opt/swift), man pages, the systemd unit, and /sbin/mount.vikingfs for fstab.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-0.1.0}
ARCH=$(dpkg --print-architecture)
bash scripts/install-deps.sh
swift build -c release --static-swift-stdlib --product vikingfs-mount
swift build -c release --static-swift-stdlib --product vikingfs
OUT=$(mktemp -d)
ROOT=$OUT/vikingfs_${VERSION}_${ARCH}
install -Dm755 .build/release/vikingfs-mount "$ROOT/usr/bin/vikingfs-mount"
install -Dm755 .build/release/vikingfs "$ROOT/usr/bin/vikingfs"
mkdir -p "$ROOT/sbin"
ln -s /usr/bin/vikingfs-mount "$ROOT/sbin/mount.vikingfs"
for page in man/*.8; do install -Dm644 "$page" "$ROOT/usr/share/man/man8/$(basename "$page")"; gzip -9n "$ROOT/usr/share/man/man8/$(basename "$page")"; done
install -Dm644 packaging/systemd/vikingfs@.service "$ROOT/lib/systemd/system/vikingfs@.service"
install -Dm644 docs/format.md "$ROOT/usr/share/doc/vikingfs/format.md"
install -Dm644 docs/threat-model.md "$ROOT/usr/share/doc/vikingfs/threat-model.md"
install -d -m700 "$ROOT/etc/vikingfs"
mkdir -p "$ROOT/DEBIAN"
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: vikingfs
Version: $VERSION
Architecture: $ARCH
Maintainer: vikingfs developers <dev@vikingfs.invalid>
Depends: fuse3, libfuse3-3, libssl3, libargon2-1, libcurl4
Section: utils
Priority: optional
Description: encrypted multi-tenant FUSE view of an OpenViking AGFS directory
 vikingfs-mount seals every account's subtree of an OpenViking storage directory under its own key
 (AES-256-GCM, OpenViking-compatible key hierarchy and OVE1 envelopes); vikingfs is the admin command.
CONTROL
dpkg-deb --root-owner-group --build "$ROOT" >/dev/null
mv "$ROOT.deb" .
echo "built $(ls vikingfs_${VERSION}_${ARCH}.deb)"
