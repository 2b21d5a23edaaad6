#!/bin/sh
# Runs a command (nats-server -c deploy/nats/...) with the secrets that
# deploy/nats's configs read from the environment, each taken from its own
# file (nats-<role>-password, jetstream-key), so every secret exists once,
# as a file: Docker secrets (/run/secrets), systemd credentials
# ($CREDENTIALS_DIRECTORY) or SECRETS_DIR.
set -eu
dir=${SECRETS_DIR:-${CREDENTIALS_DIRECTORY:-/run/secrets}}
read_secret() {
	if [ ! -s "$dir/$1" ]; then
		echo "nats-env.sh: $dir/$1 is missing or empty: run deploy/secrets/init.sh" >&2
		exit 1
	fi
	cat "$dir/$1"
}
for role in ${MEDPIPE_NATS_ROLES:-ingest decrypt publish replay admin dashboard}; do
	upper=$(echo "$role" | tr a-z A-Z)
	export "MEDPIPE_NATS_${upper}_PASSWORD=$(read_secret "nats-$role-password")"
done
MEDPIPE_JETSTREAM_KEY=$(read_secret jetstream-key)
export MEDPIPE_JETSTREAM_KEY
exec "$@"
