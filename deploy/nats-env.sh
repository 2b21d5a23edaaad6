#!/bin/sh
# Runs a command (nats-server -c deploy/nats/...) with the secrets that
# deploy/nats's configs read from the environment, each taken from its own
# file (nats-<role>-password, jetstream-key), so every secret exists once,
# as a file: Docker secrets (/run/secrets), systemd credentials
# ($CREDENTIALS_DIRECTORY) or SECRETS_DIR.
set -eu
dir=${SECRETS_DIR:-${CREDENTIALS_DIRECTORY:-/run/secrets}}
# need stops here (not in a $(...) subshell, whose exit would only end
# the subshell) when a secret is missing: never a server with an empty password.
need() {
	if [ ! -s "$dir/$1" ]; then
		echo "nats-env.sh: $dir/$1 is missing or empty: run deploy/secrets/init.sh" >&2
		exit 1
	fi
}
for role in ${MEDPIPE_NATS_ROLES:-ingest decrypt publish replay admin dashboard}; do
	need "nats-$role-password"
	upper=$(echo "$role" | tr a-z A-Z)
	export "MEDPIPE_NATS_${upper}_PASSWORD=$(cat "$dir/nats-$role-password")"
done
need jetstream-key
MEDPIPE_JETSTREAM_KEY=$(cat "$dir/jetstream-key")
export MEDPIPE_JETSTREAM_KEY
exec "$@"
