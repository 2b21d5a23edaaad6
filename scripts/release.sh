#!/usr/bin/env bash
# Build a release into dist/: static medpipe binaries for Linux amd64, arm64
# and armv7 (version stamped, reproducible), a tarball and a .deb with the
# systemd units per architecture, a CycloneDX SBOM of the binary's modules,
# and SHA256SUMS over everything.
#
# Usage: scripts/release.sh [-a ARCH[,ARCH…]] [-o DIR] [VERSION]
#   VERSION  default: `git describe --tags --always --dirty` without a leading v
#   -a       architectures (default amd64,arm64,armv7)
#   -o       output directory (default dist)
# Reproducible: the same commit gives the same bytes (CGO off, -trimpath, no
# build id, file times from the commit's time via SOURCE_DATE_EPOCH, sorted
# archives owned by root). `bench` is linked only with -tags bench, so the
# release binary carries no plotting or PDF code.
# Tools are pinned and fetched from the Go module proxy with `go run`:
# nfpm for the .deb, cyclonedx-gomod for the SBOM.
set -euo pipefail
cd "$(dirname "$0")/.."

NFPM=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
CYCLONEDX=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0
ARCHES=amd64,arm64,armv7
OUT=dist
while getopts a:o: opt; do
	case $opt in
	a) ARCHES=$OPTARG ;;
	o) OUT=$OPTARG ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
VERSION=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)}
VERSION=${VERSION#v}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH CGO_ENABLED=0 GOFLAGS=-mod=readonly
# The revision too: in workspace mode (go.work) Go records no VCS settings.
REVISION=$(git rev-parse HEAD 2>/dev/null || true)
LDFLAGS="-s -w -buildid= -X main.version=$VERSION -X main.revision=$REVISION"

log() { printf '== %s\n' "$*"; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Units and settings as the package installs them: Debian packages put the
# binary in /usr/bin, never /usr/local.
STAGE=$WORK/stage
mkdir -p "$STAGE/systemd"
for f in deploy/systemd/*; do
	sed 's#/usr/local/bin/#/usr/bin/#g; s#/usr/local/lib/#/usr/lib/#g' "$f" >"$STAGE/systemd/$(basename "$f")"
	touch -d "@$SOURCE_DATE_EPOCH" "$STAGE/systemd/$(basename "$f")"
done
# The NATS server's configuration and its secrets-to-environment wrapper,
# for medpipe-nats.service.
cp deploy/nats-env.sh "$STAGE/systemd/"
mkdir -p "$STAGE/nats"
cp deploy/nats/*.conf "$STAGE/nats/"
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

IFS=, read -r -a arches <<<"$ARCHES"
for arch in "${arches[@]}"; do
	case $arch in
	amd64 | arm64) goarch=$arch goarm= debarch=$arch ;;
	armv7) goarch=arm goarm=7 debarch=armhf ;;
	*) echo "unknown architecture $arch (amd64, arm64, armv7)" >&2; exit 2 ;;
	esac
	name=medpipe_${VERSION}_linux_$arch
	dir=$WORK/$name
	mkdir -p "$dir"
	log "build $name"
	GOOS=linux GOARCH=$goarch GOARM=$goarm go build -trimpath -ldflags "$LDFLAGS" -o "$dir/medpipe" ./cmd/medpipe
	# The SBOM lists what the binary really links (its build information),
	# without a timestamp or random serial, so it is reproducible too.
	go run "$CYCLONEDX" bin -json -std -noserial -notimestamp -version "v$VERSION" \
		-output "$OUT/$name.cdx.json" "$dir/medpipe"
	cp README.md SECURITY.md LICENSE CHANGELOG.md "$dir/"
	cp -r "$STAGE/systemd" "$STAGE/nats" "$dir/"
	find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
		-C "$WORK" -cf - "$name" | gzip -n -9 >"$OUT/$name.tar.gz"

	log "package medpipe_${VERSION}_$debarch.deb"
	{
		cat <<YAML
name: medpipe
arch: $debarch
platform: linux
version: $VERSION
version_schema: none
section: net
priority: optional
maintainer: medpipe developers <medpipe@example.org>
description: |
  Carries telemetry from wearable medical devices to MQTT dashboards
  (TCP edge, NATS JetStream, decrypt workers, MQTT bridge).
vendor: medpipe
homepage: https://github.com/medpipe/medpipe
license: Apache-2.0
mtime: "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
contents:
  - src: $dir/medpipe
    dst: /usr/bin/medpipe
    file_info: {mode: 0755}
  - src: $dir/LICENSE
    dst: /usr/share/doc/medpipe/copyright
  - src: $dir/README.md
    dst: /usr/share/doc/medpipe/README.md
  - src: $dir/SECURITY.md
    dst: /usr/share/doc/medpipe/SECURITY.md
YAML
		for f in "$STAGE"/systemd/*; do
			b=$(basename "$f")
			case $b in
			*.service) printf '  - src: %s\n    dst: /usr/lib/systemd/system/%s\n' "$f" "$b" ;;
			*.env) printf '  - src: %s\n    dst: /etc/medpipe/%s\n    type: config|noreplace\n    file_info: {mode: 0640}\n' "$f" "$b" ;;
			*.sh) printf '  - src: %s\n    dst: /usr/lib/medpipe/%s\n    file_info: {mode: 0755}\n' "$f" "$b" ;;
			esac
		done
		for f in "$STAGE"/nats/*.conf; do
			printf '  - src: %s\n    dst: /etc/medpipe/nats/%s\n    type: config|noreplace\n    file_info: {mode: 0640}\n' "$f" "$(basename "$f")"
		done
	} >"$WORK/nfpm-$arch.yaml"
	go run "$NFPM" package --config "$WORK/nfpm-$arch.yaml" --packager deb --target "$OUT/medpipe_${VERSION}_$debarch.deb" >/dev/null
done

(cd "$OUT" && rm -f SHA256SUMS && sha256sum -- *.tar.gz *.deb *.cdx.json >SHA256SUMS)
log "release $VERSION in $OUT:"
ls -l "$OUT"
