#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Mosquitto, HAProxy and
# Chromium from Debian's packages, Node-RED from npm into deploy/node-red/node_modules,
# git-ignored), checks formatting, vet and staticcheck, runs every module's
# tests, compiles the firmware for the Pico with TinyGo (firmware/tinygo.sh),
# builds a release twice to check it is reproducible (scripts/release.sh)
# and runs every fuzz target briefly. Usage: ./scripts/test.sh
# Environment: FUZZTIME (per fuzz target, default 3s), TEST_TIMEOUT (default 30m).
set -euo pipefail
cd "$(dirname "$0")/.."

STATICCHECK_VERSION=v0.8.2 # staticcheck 2026.2.2: supports Go 1.26
FUZZTIME=${FUZZTIME:-3s}
TEST_TIMEOUT=${TEST_TIMEOUT:-30m}

log() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# apt-get waits up to 10 minutes for another apt-get to let go of dpkg's
# lock instead of failing at once (a package install running beside the
# suite held it and failed a run).
APT_GET=(apt-get -o DPkg::Lock::Timeout=600)
apt_install() {
	as_root "${APT_GET[@]}" update -qq
	as_root env DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" install -y -qq "$@"
}

# --- what the tests need -------------------------------------------------
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
	log "installing mosquitto (Debian package)"
	apt_install mosquitto mosquitto-clients
fi
# The package starts a broker on :1883, which would take `medpipe up`'s port.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
	as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null; then
	echo "mosquitto could not be installed: the tests need it" >&2
	exit 1
fi
# deploy/'s tests check the shipped haproxy.cfg with haproxy and score the
# systemd units with systemd-analyze.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
	log "installing haproxy (Debian package)"
	apt_install haproxy
fi
# cmd/medpipe's test asks bash, zsh and fish to complete with the scripts
# `medpipe completion` generates.
if ! command -v zsh >/dev/null || ! command -v fish >/dev/null; then
	log "installing zsh and fish (Debian packages, for the completion test)"
	apt_install zsh fish
fi
if ! command -v systemd-analyze >/dev/null; then
	log "installing systemd (Debian package, for systemd-analyze)"
	apt_install systemd
fi
# The package may start a proxy of its own; e2e/'s PROXY protocol test runs
# the shipped haproxy.cfg on loopback itself.
if command -v systemctl >/dev/null && systemctl is-active --quiet haproxy 2>/dev/null; then
	as_root systemctl disable --now haproxy >/dev/null 2>&1 || true
fi
if [ ! -x /usr/sbin/haproxy ] && ! command -v haproxy >/dev/null; then
	echo "haproxy could not be installed: the deploy and PROXY protocol tests need it" >&2
	exit 1
fi
# Headless Chromium for the dashboard test (deploy/).
if ! command -v chromium >/dev/null; then
	log "installing chromium (Debian package)"
	apt_install chromium
fi
command -v chromium >/dev/null || { echo "chromium could not be installed: the dashboard test needs it" >&2; exit 1; }
# Node-RED and the dashboard, at the versions package-lock.json pins.
if [ ! -f deploy/node-red/node_modules/node-red/red.js ] || [ deploy/node-red/package-lock.json -nt deploy/node-red/node_modules/.package-lock.json ]; then
	log "installing Node-RED (npm ci in deploy/node-red)"
	command -v npm >/dev/null || apt_install nodejs npm
	(cd deploy/node-red && npm ci --no-audit --no-fund --loglevel=error)
fi
# The old dashboard's nodes (node-red-dashboard 1.x) for TestLegacyDashboard, in their own folder.
if [ ! -f deploy/node-red/legacy/node_modules/node-red-dashboard/package.json ] || [ deploy/node-red/legacy/package-lock.json -nt deploy/node-red/legacy/node_modules/.package-lock.json ]; then
	log "installing node-red-dashboard 1.x (npm ci in deploy/node-red/legacy)"
	(cd deploy/node-red/legacy && npm ci --no-audit --no-fund --loglevel=error)
fi

mapfile -t MODULES < <(go list -m -f '{{.Dir}}')
PKGS=()
for m in "${MODULES[@]}"; do PKGS+=("$m/..."); done

# --- static checks ---------------------------------------------------------
log "gofmt"
unformatted=$(gofmt -l "${MODULES[@]}")
if [ -n "$unformatted" ]; then
	echo "not gofmt'ed:" >&2
	echo "$unformatted" >&2
	exit 1
fi
log "go vet"
go vet "${PKGS[@]}"
go vet -tags bench ./cmd/medpipe # bench is linked only with -tags bench
log "staticcheck $STATICCHECK_VERSION"
go run "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" "${PKGS[@]}"
go run "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" -tags bench ./cmd/medpipe

# --- tests -------------------------------------------------------------------
log "go test"
# Verbose, so that no skipped test passes unnoticed: the console gets each
# package's result, every skip with its reason and, on failure, the failing
# output; the whole run is kept in test-artifacts/go-test.log.
mkdir -p test-artifacts
GOTEST_LOG=test-artifacts/go-test.log
rc=0
go test -v -count=1 -timeout "$TEST_TIMEOUT" "${PKGS[@]}" >"$GOTEST_LOG" 2>&1 || rc=$?
grep -E '^(ok|FAIL|panic:)' "$GOTEST_LOG" || true
if grep -qE '^\s*--- SKIP' "$GOTEST_LOG"; then
	echo "-- skipped (the reason is the line above each):"
	grep -B1 -E '^\s*--- SKIP' "$GOTEST_LOG" | grep -v '^--$'
fi
if [ "$rc" -ne 0 ]; then
	echo "-- go test failed (exit $rc); its output without passing tests' noise (all of it in $GOTEST_LOG):"
	grep -vE '^=== (RUN|PAUSE|CONT|NAME)|^\s*--- PASS' "$GOTEST_LOG" | tail -n 600
	exit "$rc"
fi

log "firmware for the Pico (TinyGo built from source against LLVM 19; minutes the first time)"
firmware/tinygo.sh --bench-defaults # CI: a bench image (firmware/README.md, "Provisioning")

log "release build (amd64), twice: the same commit must give the same bytes"
REL=$(mktemp -d)
trap 'rm -rf "$REL"' EXIT
scripts/release.sh -a amd64 -o "$REL/a" 0.0.0-ci >/dev/null
scripts/release.sh -a amd64 -o "$REL/b" 0.0.0-ci >/dev/null
if ! cmp -s "$REL/a/SHA256SUMS" "$REL/b/SHA256SUMS"; then
	echo "release build not reproducible:" >&2
	diff "$REL/a/SHA256SUMS" "$REL/b/SHA256SUMS" >&2
	exit 1
fi
(cd "$REL/a" && sha256sum --quiet -c SHA256SUMS)
tar -xzf "$REL/a/medpipe_0.0.0-ci_linux_amd64.tar.gz" -C "$REL"
[ "$("$REL/medpipe_0.0.0-ci_linux_amd64/medpipe" version)" = "medpipe 0.0.0-ci" ] || { echo "release binary not stamped with its version" >&2; exit 1; }
debfiles=$(dpkg-deb -c "$REL/a/medpipe_0.0.0-ci_amd64.deb")
grep -q ' ./usr/lib/systemd/system/medpipe-up.service$' <<<"$debfiles" || { echo ".deb lacks the systemd units" >&2; exit 1; }

log "fuzz targets, $FUZZTIME each"
for m in "${MODULES[@]}"; do
	while IFS= read -r pkg; do
		dir=$(go list -f '{{.Dir}}' "$pkg")
		for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
			echo "-- $pkg $target"
			# Go's fuzzer can report "context deadline exceeded" when -fuzztime
			# ends mid-shutdown (while a worker handles a new interesting
			# input), with no failing input; CI saw it twice in a row. Only
			# that is retried, up to three runs in all; a real failure leaves
			# an input under testdata/fuzz and fails at once.
			for run in 1 2 3; do
				out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1) && { echo "$out" | tail -1; continue 2; }
				echo "$out" | tail -20
				if ! echo "$out" | grep -q "context deadline exceeded" || echo "$out" | grep -q "Failing input written"; then
					exit 1
				fi
				echo "   (fuzzer stopped at its deadline without a failing input; run $run of 3)"
			done
			exit 1
		done
	done < <(go list "$m/...")
done
log "all tests passed"
