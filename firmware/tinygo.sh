#!/usr/bin/env bash
# Build the firmware for the Raspberry Pi Pico (RP2040, Cortex-M0+) with a
# TinyGo built from its Go module source against Debian's LLVM 19: a linked
# ELF and the UF2 to copy onto the Pico, with the device's factory block
# (per-device secrets) in it, and their flash/RAM sizes.
#
# Usage: firmware/tinygo.sh (--factory FILE | --bench-defaults) [--wiring old|new] [-o OUT.uf2] [PKG]
#        firmware/tinygo.sh -o OUT.o [PKG]
#   --factory FILE    the device's factory block, as `medpipe keys add ID
#                     --firmware-config FILE` wrote it (.uf2 or raw)
#   --bench-defaults  put the published bench secrets in instead (a Pico on a
#                     desk, never a device on a patient); CI builds this way
#   --wiring          the board: old (default; GP2 drives the switch common,
#                     GP3/GP4 active-high, LED GP25) or new (switch to ground,
#                     GP3/GP4 active-low, LED GP2); firmware/README.md, "Wiring"
#   -o                output (default firmware/build/medpipe-pico.uf2, the ELF
#                     beside it as .elf, or $MEDPIPE_FIRMWARE_OUT); a name
#                     ending in .o only compiles (no link, no secrets needed)
#   PKG  package to build (default ./cmd/pico), relative to the firmware
#        folder; an absolute directory is built as "." from inside it (so a
#        module outside the repo can be compiled too).
# A build without --factory or --bench-defaults is refused: a flashable
# image always carries a device's own secrets, or says it is a bench one.
# Environment:
#   MEDPIPE_TINYGO_CACHE  cache root (default ~/.cache/medpipe); TinyGo source,
#                         binary and TINYGOROOT live in <cache>/tinygo-0.42.0
#   MEDPIPE_RP2040_SVD    RP2040 SVD (default <repo>/../shared/firmware/RP2040.svd,
#                         or beside the repository a clone was made from)
#   MEDPIPE_FIRMWARE_OUT  output (overridden by -o)
# The first run installs LLVM 19 with apt-get (if missing), builds TinyGo and
# its C runtime from Debian packages (a few minutes); later runs reuse the
# cache. The C library TinyGo links (picolibc) is Debian's
# picolibc-arm-none-eabi build for thumbv6-m; compiler-rt's builtins are
# compiled by TinyGo from Debian's llvm-toolchain-19 source package (TinyGo's
# module zip lacks both: they are git submodules upstream). GOWORK=off is set
# for every go and tinygo call, so the firmware module builds on its own
# go.mod: it reaches the root module (wire, provision) through its replace
# directive (github.com/medpipe/medpipe => ../).
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
OUT=${MEDPIPE_FIRMWARE_OUT:-$FW_DIR/build/medpipe-pico.uf2}
PKG=./cmd/pico
FACTORY=
BENCH=0
WIRING=old

while [ $# -gt 0 ]; do
	case $1 in
	-o) [ $# -ge 2 ] || die "-o needs a path"; OUT=$2; shift 2 ;;
	-o=*) OUT=${1#-o=}; shift ;;
	--factory) [ $# -ge 2 ] || die "--factory needs a file"; FACTORY=$2; shift 2 ;;
	--factory=*) FACTORY=${1#--factory=}; shift ;;
	--bench-defaults) BENCH=1; shift ;;
	--wiring) [ $# -ge 2 ] || die "--wiring needs old or new"; WIRING=$2; shift 2 ;;
	--wiring=*) WIRING=${1#--wiring=}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; [ $# -le 1 ] || die "at most one package"; [ $# -eq 0 ] || PKG=$1; break ;;
	-*) usage >&2; die "unknown option $1" ;;
	*) PKG=$1; shift ;;
	esac
done
[ $# -le 1 ] || die "at most one package"
case $OUT in /*) ;; *) OUT=$CALLER_PWD/$OUT ;; esac
case $WIRING in old | new) ;; *) die "--wiring must be old or new (got $WIRING)" ;; esac
LINK=1
case $OUT in
*.o) LINK=0 ;;
*.uf2) ;;
*) die "output must end in .uf2 (linked, with the ELF beside it) or .o (compiled only): got $OUT" ;;
esac
if [ "$LINK" = 1 ]; then
	# Checked before minutes of building: a flashable image needs secrets.
	if [ -n "$FACTORY" ] && [ "$BENCH" = 1 ]; then
		die "--factory and --bench-defaults exclude each other"
	elif [ -n "$FACTORY" ]; then
		case $FACTORY in /*) ;; *) FACTORY=$CALLER_PWD/$FACTORY ;; esac
		[ -f "$FACTORY" ] || die "no such factory block: $FACTORY"
	elif [ "$BENCH" = 0 ]; then
		die "refusing to build a flashable image without per-device secrets:
   give --factory FILE (written by: medpipe keys add ID --firmware-config FILE)
   or, for a bench Pico only, --bench-defaults (published secrets)"
	fi
fi
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

# --- 6. the C runtime a linked image needs, from Debian packages --------------
# compiler-rt's builtins: TinyGo compiles lib/compiler-rt-builtins itself;
# the files come from Debian's llvm-toolchain-19 source package (the same
# LLVM release TinyGo is built against). picolibc: Debian's
# picolibc-arm-none-eabi, its thumb/v6-m/nofp libc.a, placed where TinyGo
# looks for its own picolibc build; its __aeabi_mem* aliases are made weak,
# since compiler-rt defines the same symbols, and its debug sections are
# stripped (GCC's .debug_frame version 1 stops TinyGo's stack size analysis).
if [ "$LINK" = 1 ]; then
	LLVM_VERSION=$(dpkg-query -W -f '${Version}' "llvm-$LLVM_MAJOR-dev")
	APT_DIR=$CACHE_DIR/apt
	# A private deb-src list made from the system's Debian sources, so the
	# system's apt configuration stays as it is.
	apt_src() {
		mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/sources" "$APT_DIR/cache/archives/partial"
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then
			sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$APT_DIR/sources/debian.sources"
		else
			grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | sed 's/^deb /deb-src /' >"$APT_DIR/sources/debian.list"
		fi
		APT_OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APT_DIR/sources"
			-o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "APT::Sandbox::User=root")
		apt-get "${APT_OPTS[@]}" update -qq
	}
	CRT_KEY="llvm-toolchain-$LLVM_MAJOR $LLVM_VERSION"
	if [ -f "$ROOT/lib/compiler-rt-builtins/int_lib.h" ] && stamp_ok compiler-rt "$CRT_KEY"; then
		log "compiler-rt builtins: cached ($CRT_KEY)"
	else
		log "fetching Debian source package llvm-toolchain-$LLVM_MAJOR=$LLVM_VERSION for compiler-rt's builtins"
		apt_src
		TMPD=$(mktemp -d)
		(cd "$TMPD" && apt-get "${APT_OPTS[@]}" source --download-only -qq "llvm-toolchain-$LLVM_MAJOR=$LLVM_VERSION" >/dev/null)
		orig=$(ls "$TMPD"/llvm-toolchain-"$LLVM_MAJOR"_*.orig.tar.xz 2>/dev/null | head -1)
		[ -n "$orig" ] || die "no llvm-toolchain-$LLVM_MAJOR orig tarball fetched"
		top=$(basename "$orig" .orig.tar.xz) # the tarball's top folder, as Debian names it
		tar -xJf "$orig" -C "$TMPD" "$top/compiler-rt/lib/builtins" "$top/compiler-rt/LICENSE.TXT"
		rm -rf "$ROOT/lib/compiler-rt-builtins"
		mkdir -p "$ROOT/lib"
		mv "$TMPD/$top/compiler-rt/lib/builtins" "$ROOT/lib/compiler-rt-builtins"
		cp "$TMPD/$top/compiler-rt/LICENSE.TXT" "$ROOT/lib/compiler-rt-builtins/"
		rm -rf "$TMPD"
		TMPD=
		stamp_set compiler-rt "$CRT_KEY"
	fi
	TINYGO_CACHE=$(cd / && TINYGOROOT=$ROOT "$TINYGO" env GOCACHE)
	PICOLIBC_A=$TINYGO_CACHE/picolibc-thumbv6m-unknown-unknown-eabi-cortex-m0plus/lib.a
	picolibc_candidate() { apt-cache policy picolibc-arm-none-eabi | awk '/Candidate:/ {print $2}'; }
	PICOLIBC_VERSION=$(picolibc_candidate)
	if [ -z "$PICOLIBC_VERSION" ] || [ "$PICOLIBC_VERSION" = "(none)" ]; then
		log "apt knows no picolibc-arm-none-eabi yet: apt-get update"
		SUDO=()
		[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
		"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
		PICOLIBC_VERSION=$(picolibc_candidate)
	fi
	[ -n "$PICOLIBC_VERSION" ] && [ "$PICOLIBC_VERSION" != "(none)" ] || die "apt knows no picolibc-arm-none-eabi"
	if [ -f "$PICOLIBC_A" ] && stamp_ok picolibc "$PICOLIBC_VERSION $PICOLIBC_A"; then
		log "picolibc: cached (Debian picolibc-arm-none-eabi $PICOLIBC_VERSION)"
	else
		log "fetching Debian package picolibc-arm-none-eabi=$PICOLIBC_VERSION (its thumb/v6-m/nofp libc.a only; not installed)"
		TMPD=$(mktemp -d)
		(cd "$TMPD" && apt-get -o APT::Sandbox::User=root download -qq "picolibc-arm-none-eabi=$PICOLIBC_VERSION")
		dpkg-deb --fsys-tarfile "$TMPD"/picolibc-arm-none-eabi_*.deb |
			tar -x -C "$TMPD" ./usr/lib/picolibc/arm-none-eabi/lib/thumb/v6-m/nofp/libc.a ./usr/share/doc/picolibc-arm-none-eabi/copyright
		weak=()
		for sym in memcpy memcpy4 memcpy8 memmove memmove4 memmove8 memset memset4 memset8 memclr memclr4 memclr8; do
			weak+=("--weaken-symbol=__aeabi_$sym")
		done
		mkdir -p "$(dirname "$PICOLIBC_A")"
		"llvm-objcopy-$LLVM_MAJOR" --strip-debug "${weak[@]}" "$TMPD/usr/lib/picolibc/arm-none-eabi/lib/thumb/v6-m/nofp/libc.a" "$PICOLIBC_A.tmp"
		mv "$PICOLIBC_A.tmp" "$PICOLIBC_A"
		cp "$TMPD/usr/share/doc/picolibc-arm-none-eabi/copyright" "$(dirname "$PICOLIBC_A")/copyright"
		rm -rf "$TMPD"
		TMPD=
		stamp_set picolibc "$PICOLIBC_VERSION $PICOLIBC_A"
	fi
fi
exec 9>&- # setup done; release the lock

log "$("$TINYGO" version)"

# --- 7. compile (an object) or link (ELF, then UF2 with the factory block) -----
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
LDFLAGS="-X main.wiring=$WIRING"
start=$SECONDS
if [ "$LINK" = 0 ]; then
	log "tinygo build -target=pico -o $OUT $PKG (in $BUILD_DIR, GOWORK=off)"
	(cd "$BUILD_DIR" && TINYGOROOT=$ROOT "$TINYGO" build -target=pico -ldflags "$LDFLAGS" -o "$OUT" "$PKG")
	[ -s "$OUT" ] || die "tinygo produced no $OUT"
	log "compiled in $((SECONDS - start)) s"
	# The object is not linked, so a Go function that TinyGo lacks would only
	# show up at link time. Undefined symbols with a '.' or '/' are Go
	# symbols: fail on them. (Expected undefined: compiler-rt __aeabi_*,
	# linker-script _s*/_e*, TinyGo asm.)
	go_undef=$("$LLVM_NM" -u "$OUT" | awk '{print $NF}' | grep '[./]' || true)
	[ -z "$go_undef" ] || die "undefined Go symbols (would fail to link):
$go_undef"
	"$LLVM_SIZE" "$OUT"
	read -r text data bss _ < <("$LLVM_SIZE" "$OUT" | awk 'NR==2')
	echo "$(basename "$OUT"): unlinked object, flash ~$((text + data)) bytes, RAM ~$((data + bss)) bytes static"
	exit 0
fi
ELF=${OUT%.uf2}.elf
rm -f "$ELF"
log "tinygo build -target=pico -ldflags '$LDFLAGS' -o $ELF $PKG (in $BUILD_DIR, GOWORK=off)"
(cd "$BUILD_DIR" && TINYGOROOT=$ROOT "$TINYGO" build -target=pico -ldflags "$LDFLAGS" -o "$ELF" "$PKG")
[ -s "$ELF" ] || die "tinygo produced no $ELF"
log "linked in $((SECONDS - start)) s"
secrets=(-bench-defaults)
[ -z "$FACTORY" ] || secrets=(-factory "$FACTORY")
(cd "$FW_DIR" && go run ./internal/mkuf2 -elf "$ELF" "${secrets[@]}" -o "$OUT")

# --- 8. sizes ------------------------------------------------------------------
# From the sections (llvm-size -A): flash is everything placed in flash
# (0x10000000-0x1fffffff: boot2, vectors and code, read-only data) plus
# .data's initial values; RAM is everything placed in RAM (0x20000000 on:
# .data, .bss and the two cores' main stacks), the rest of the 264 KiB
# being the heap (goroutine stacks included).
"$LLVM_SIZE" -A "$ELF" | awk '$3 ~ /^[0-9]+$/ && $3 > 0'
read -r flash ram < <("$LLVM_SIZE" -A -d "$ELF" | awk '
	$3 ~ /^[0-9]+$/ && $3 >= 268435456 && $3 < 536870912 { flash += $2 }
	$3 ~ /^[0-9]+$/ && $3 >= 536870912 { ram += $2 }
	$1 == ".data" { flash += $2 }
	END { print flash + 0, ram + 0 }')
blocks=$(($(stat -c %s "$OUT") / 512))
echo "$(basename "$ELF"): flash $flash bytes, RAM $ram bytes static; $(basename "$OUT"): $blocks UF2 blocks ($WIRING wiring, $([ -n "$FACTORY" ] && echo "factory block $(basename "$FACTORY")" || echo "BENCH secrets"))"
