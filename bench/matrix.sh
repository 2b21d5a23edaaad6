#!/usr/bin/env bash
# Runs the bench matrix of bench/README.md: 1,000 / 5,000 / 10,000 devices at
# 1, 5 and 20 readings/s, embedded and as separate processes, topic layout;
# then the JSON layout at QoS 0 and 1. Each scenario writes its report to
# $OUT/<name>/; a summary table goes to $OUT/summary.md.
#   bench/matrix.sh [duration]       (default 20s per scenario; about 25 min in all)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
OUT=${OUT:-bench-results/matrix}
BIN=${BIN:-$(mktemp -d)/medpipe}
go build -tags bench -o "$BIN" ./cmd/medpipe
mkdir -p "$OUT"
run() { # name, then bench flags
	local name=$1
	shift
	echo "== $name"
	"$BIN" bench --out "$OUT/$name" --duration "$DURATION" --drain 20s --progress=false "$@" >"$OUT/$name.log" 2>&1 ||
		echo "   (failed: see $OUT/$name.log)"
}
for stages in embedded process; do
	for devices in 1000 5000 10000; do
		for rate in 1 5 20; do
			run "$stages-$devices-x$rate" --stages "$stages" --devices "$devices" --rate "$rate"
		done
	done
done
for qos in 0 1; do
	for devices in 1000 5000; do
		for rate in 1 5; do
			run "json-q$qos-$devices-x$rate" --layout json --qos "$qos" --devices "$devices" --rate "$rate"
		done
	done
done
python3 - "$OUT" >"$OUT/summary.md" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| scenario | offered/s | delivered/s | lost | dup | p50 ms | p99 ms | max ms | MQTT msgs/s | bottleneck ceiling (readings/s) | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "report.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))["results"][0]
    c = r.get("ceilings") or {}
    t, l = r["totals"], r["latency"]
    ceil = f'{c.get("bottleneck","?")} {c.get("bottleneck_readings_per_s",0):,.0f}' if c else r.get("ceiling_error", "—")
    print(f'| {name} | {r["offered_readings_per_s"]:,.0f} | {r["delivered_readings_per_s"]:,.0f} | {t["lost"]} | {t["duplicated"]} | '
          f'{l["p50_ms"]:.1f} | {l["p99_ms"]:.1f} | {l["max_ms"]:.0f} | {r["mqtt_messages_per_s"]:,.0f} | {ceil} | {r.get("ratio_of_ceiling",0):.2f} |')
PY
cat "$OUT/summary.md"
