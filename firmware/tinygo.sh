#!/usr/bin/env bash
# Compile the firmware for the Raspberry Pi Pico (RP2040, Cortex-M0+) with a
# TinyGo built from its Go module source against Debian's LLVM 19, and print
# the object's flash/RAM sizes.
#
# Usage: firmware/tinygo.sh [-o OUT.o] [PKG]
#   PKG  package to build (default ./cmd/pico), relative to the firmware
#        folder; an absolute directory is built as "." from inside it (so a
#        module outside the repo can be compiled too).
#   -o   output object (default firmware/build/pico.o, or $MEDPIPE_FIRMWARE_OUT);
#        must end in .o: TinyGo then stops before linking and needs no C library.
# Environment:
#   MEDPIPE_TINYGO_CACHE  cache root (default ~/.cache/medpipe); TinyGo source,
#                         binary and TINYGOROOT live in <cache>/tinygo-0.42.0
#   MEDPIPE_RP2040_SVD    RP2040 SVD (default <repo>/../shared/firmware/RP2040.svd,
#                         or beside the repository a clone was made from)
#   MEDPIPE_FIRMWARE_OUT  output object (overridden by -o)
# The first run installs LLVM 19 with apt-get (if missing) and builds TinyGo
# (a few minutes); later runs reuse the cache. GOWORK=off is set for every go
# and tinygo call, so the firmware module builds on its own go.mod: it reaches
# the root module (wire) through its replace directive (github.com/medpipe/medpipe => ../).
set -euo pipefail

TINYGO_MODULE=github.com/tinygo-org/tinygo # tinygo.org/x/tinygo is not a real module path
TINYGO_VERSION=0.42.0
LLVM_MAJOR=19
APT_PACKAGES=("llvm-${LLVM_MAJOR}-dev" "libclang-${LLVM_MAJOR}-dev" "clang-${LLVM_MAJOR}" "lld-${LLVM_MAJOR}" g++)
RP_SVD_SOURCE=https://github.com/posborne/cmsis-svd/tree/master/data/RaspberryPi # as in TinyGo's gen-device-rp

log() { printf '== %s\n' "$*"; }
die() { printf '== ERROR: %s\n' "$*" >&2; exit 1; }
TMPD=
cleanup() {
	local rc=$?
	[ -z "$TMPD" ] || rm -rf "$TMPD"
	[ "$rc" -eq 0 ] || printf '== FAILED (exit %s)\n' "$rc" >&2
}
trap cleanup EXIT

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

CALLER_PWD=$PWD
FW_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$FW_DIR")
CACHE_DIR=${MEDPIPE_TINYGO_CACHE:-$HOME/.cache/medpipe}
ROOT=$CACHE_DIR/tinygo-$TINYGO_VERSION # the writable source copy == TINYGOROOT
TINYGO=$ROOT/build/tinygo
SVD=${MEDPIPE_RP2040_SVD:-$REPO_ROOT/../shared/firmware/RP2040.svd}
# A clone elsewhere (CI's clean clone) finds the shared folder beside the
# repository it was cloned from.
if [ -z "${MEDPIPE_RP2040_SVD:-}" ] && [ ! -f "$SVD" ]; then
	origin=$(git -C "$REPO_ROOT" config --get remote.origin.url 2>/dev/null || true)
	if [ -n "$origin" ] && [ -f "$origin/../shared/firmware/RP2040.svd" ]; then
		SVD=$origin/../shared/firmware/RP2040.svd
	fi
fi
OUT=${MEDPIPE_FIRMWARE_OUT:-$FW_DIR/build/pico.o}
PKG=./cmd/pico

while [ $# -gt 0 ]; do
	case $1 in
	-o) [ $# -ge 2 ] || die "-o needs a path"; OUT=$2; shift 2 ;;
	-o=*) OUT=${1#-o=}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; [ $# -le 1 ] || die "at most one package"; [ $# -eq 0 ] || PKG=$1; break ;;
	-*) usage >&2; die "unknown option $1" ;;
	*) PKG=$1; shift ;;
	esac
done
[ $# -le 1 ] || die "at most one package"
case $OUT in *.o) ;; *) die "output must end in .o (got $OUT): other outputs need a linker and C library" ;; esac
case $OUT in /*) ;; *) OUT=$CALLER_PWD/$OUT ;; esac
BUILD_DIR=$FW_DIR
if [ "${PKG#/}" != "$PKG" ]; then
	[ -d "$PKG" ] || die "no such directory: $PKG"
	BUILD_DIR=$PKG
	PKG=.
fi

export GOWORK=off CGO_ENABLED=1

# --- 1. system packages -----------------------------------------------------
command -v go >/dev/null || die "go not found in PATH"
missing=()
for p in "${APT_PACKAGES[@]}"; do
	[ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]} with apt-get"
	SUDO=()
	[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
	"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
else
	log "apt packages present: ${APT_PACKAGES[*]}"
fi
LLVM_SIZE=$(command -v "llvm-size-$LLVM_MAJOR") || die "llvm-size-$LLVM_MAJOR not found"
LLVM_NM=$(command -v "llvm-nm-$LLVM_MAJOR") || die "llvm-nm-$LLVM_MAJOR not found"

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/tinygo-$TINYGO_VERSION.lock"
flock 9 # one setup at a time per cache

STAMPS=$ROOT/.medpipe-stamps
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS" && printf '%s\n' "$2" >"$STAMPS/$1"; }

# --- 2. TinyGo source, copied to a writable dir -----------------------------
if [ -f "$STAMPS/source" ]; then
	log "tinygo $TINYGO_VERSION source: cached in $ROOT"
else
	log "fetching $TINYGO_MODULE@v$TINYGO_VERSION with the Go module proxy"
	json=$(cd / && go mod download -json "$TINYGO_MODULE@v$TINYGO_VERSION") || die "go mod download failed: $json"
	src=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[ -d "${src:-/nonexistent}/src/runtime" ] || die "no module Dir in: $json"
	log "copying $src -> $ROOT"
	rm -rf "$ROOT" "$ROOT.tmp"
	cp -r "$src" "$ROOT.tmp"
	chmod -R u+w "$ROOT.tmp"
	mv "$ROOT.tmp" "$ROOT"
	stamp_set source "$TINYGO_MODULE@v$TINYGO_VERSION"
fi

# --- 3. stub for tinygo.org/x/espflasher (ESP32 flashing only; the proxy
#        refuses it), wired in with a replace directive ------------------------
STUB=_medpipe-stubs/espflasher
if [ -f "$STAMPS/espflasher-stub" ]; then
	log "espflasher stub: present"
else
	log "writing stub module tinygo.org/x/espflasher in $ROOT/$STUB"
	mkdir -p "$ROOT/$STUB/pkg/espflasher"
	printf 'module tinygo.org/x/espflasher\n\ngo 1.22\n' >"$ROOT/$STUB/go.mod"
	cat >"$ROOT/$STUB/pkg/espflasher/espflasher.go" <<'EOF'
// Package espflasher stands in for tinygo.org/x/espflasher, which the Go
// module proxy does not serve. TinyGo uses it only to flash ESP32 chips; every
// operation here fails with ErrUnavailable.
package espflasher

import (
	"errors"
	"fmt"
	"io"
)

var ErrUnavailable = errors.New("espflasher: ESP32 flashing is not available in this TinyGo build (stub module)")

type ResetMode int

const (
	ResetDefault ResetMode = iota
	ResetNoReset
	ResetUSBJTAG
	ResetAuto
)

type Logger interface {
	Logf(format string, args ...interface{})
}

type StdoutLogger struct{ W io.Writer }

func (l *StdoutLogger) Logf(format string, args ...interface{}) { fmt.Fprintf(l.W, format+"\n", args...) }

type ProgressFunc func(current, total int)

type FlasherOptions struct {
	BaudRate        int
	FlashBaudRate   int
	ResetMode       ResetMode
	ConnectAttempts int
	Compress        bool
	FlashMode       string
	FlashFreq       string
	FlashSize       string
	Logger          Logger
}

func DefaultOptions() *FlasherOptions {
	return &FlasherOptions{BaudRate: 115200, FlashBaudRate: 460800, ConnectAttempts: 7, Compress: true}
}

type Flasher struct{}

func New(portName string, opts *FlasherOptions) (*Flasher, error) { return nil, ErrUnavailable }

func (f *Flasher) Close() error                                                       { return ErrUnavailable }
func (f *Flasher) ChipName() string                                                   { return "unknown" }
func (f *Flasher) EraseFlash(progress ProgressFunc) error                             { return ErrUnavailable }
func (f *Flasher) FlashImage(data []byte, offset uint32, progress ProgressFunc) error { return ErrUnavailable }
func (f *Flasher) Reset()                                                             {}
EOF
	(cd "$ROOT" && go mod edit -replace "tinygo.org/x/espflasher=./$STUB")
	stamp_set espflasher-stub "replace tinygo.org/x/espflasher=./$STUB"
fi

# --- 4. build the tinygo binary ------------------------------------------------
BUILD_KEY="$(go version) / $(dpkg-query -W -f '${Version}' "llvm-$LLVM_MAJOR-dev")"
if [ -x "$TINYGO" ] && stamp_ok tinygo-binary "$BUILD_KEY"; then
	log "tinygo binary: cached ($TINYGO)"
else
	log "building tinygo (go build -tags llvm$LLVM_MAJOR, cgo; takes a few minutes)"
	start=$SECONDS
	(cd "$ROOT" && go build -tags "llvm$LLVM_MAJOR" -o build/tinygo.tmp . && mv build/tinygo.tmp build/tinygo)
	stamp_set tinygo-binary "$BUILD_KEY"
	log "built tinygo in $((SECONDS - start)) s"
fi

# --- 5. prepare TINYGOROOT: src/net and the generated RP2040 device file -------
mkdir -p "$ROOT/src/net" # a git submodule upstream; empty is enough for code that does not import net

SVD_KEY=missing
[ ! -f "$SVD" ] || SVD_KEY="$(sha256sum <"$SVD" | cut -d' ' -f1)"
if [ -f "$ROOT/src/device/rp/rp2040.go" ] && stamp_ok device-rp2040 "$SVD_KEY"; then
	log "src/device/rp/rp2040.go: cached"
elif [ ! -f "$SVD" ] && [ -f "$ROOT/src/device/rp/rp2040.go" ] && [ -f "$STAMPS/device-rp2040" ]; then
	log "src/device/rp/rp2040.go: cached (SVD $SVD not found, so not checked for changes)"
elif [ ! -f "$SVD" ]; then
	die "RP2040 SVD not found: $SVD (set MEDPIPE_RP2040_SVD)"
else
	log "generating src/device/rp/rp2040.go from $SVD"
	(cd "$ROOT" && go build -o build/gen-device-svd ./tools/gen-device-svd/)
	TMPD=$(mktemp -d)
	tmp=$TMPD
	mkdir -p "$tmp/svd" "$tmp/rp"
	# TinyGo's machine package expects the USB controller peripheral to be
	# named USBCTRL_REGS; the Pico SDK SVD names it USB. Rename only the
	# peripheral's <name> (the line right after <peripheral>), not the fields.
	sed '/<peripheral>/{n;s|^\([[:space:]]*\)<name>USB</name>|\1<name>USBCTRL_REGS</name>|}' "$SVD" >"$tmp/svd/RP2040.svd"
	grep -q '<name>USBCTRL_REGS</name>' "$tmp/svd/RP2040.svd" || die "could not rename the USB peripheral in $SVD"
	"$ROOT/build/gen-device-svd" -source="$RP_SVD_SOURCE" "$tmp/svd" "$tmp/rp/" >/dev/null
	"$(go env GOROOT)/bin/gofmt" -w "$tmp/rp"
	grep -q 'USBCTRL_REGS' "$tmp/rp/rp2040.go" || die "generated rp2040.go lacks USBCTRL_REGS"
	cp "$tmp/rp/rp2040.go" "$tmp/rp/rp2040.s" "$ROOT/src/device/rp/"
	rm -rf "$tmp"
	stamp_set device-rp2040 "$SVD_KEY"
fi
exec 9>&- # setup done; release the lock

log "$("$TINYGO" version)"

# --- 6. compile the firmware to an object file --------------------------------
log "tinygo build -target=pico -o $OUT $PKG (in $BUILD_DIR, GOWORK=off)"
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
start=$SECONDS
(cd "$BUILD_DIR" && TINYGOROOT=$ROOT "$TINYGO" build -target=pico -o "$OUT" "$PKG")
[ -s "$OUT" ] || die "tinygo produced no $OUT"
log "compiled in $((SECONDS - start)) s"

# The object is not linked, so a Go function that TinyGo lacks would only show
# up at link time. Undefined symbols with a '.' or '/' are Go symbols: fail on them.
# (Expected undefined: compiler-rt __aeabi_*, linker-script _s*/_e*, TinyGo asm.)
go_undef=$("$LLVM_NM" -u "$OUT" | awk '{print $NF}' | grep '[./]' || true)
[ -z "$go_undef" ] || die "undefined Go symbols (would fail to link):
$go_undef"

# --- 7. sizes ------------------------------------------------------------------
"$LLVM_SIZE" "$OUT"
read -r text data bss _ < <("$LLVM_SIZE" "$OUT" | awk 'NR==2')
log "flash ~ text+data, RAM ~ data+bss (static only: no heap/stack; unlinked, so no compiler-rt, boot2 or vectors)"
echo "$(basename "$OUT"): flash $((text + data)) bytes, RAM $((data + bss)) bytes (static)"
