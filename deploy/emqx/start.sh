#!/bin/sh
# Starts EMQX for medpipe: writes the bootstrap users file that emqx.conf
# names (in the container's /tmp, never in a volume) from the password
# secrets (one per MQTT user: mqtt-<user>-password), then runs EMQX's own
# entrypoint. EMQX imports users it does not have yet at start; rotate a
# password with `emqx ctl` or the API (see README).
set -eu
secrets=${MQTT_SECRETS_DIR:-/run/secrets}
umask 077
users=/tmp/medpipe-mqtt-users.csv
echo "user_id,password,is_superuser" >"$users"
for user in ${MQTT_USERS:-medpipe dashboard replay}; do
	f="$secrets/mqtt-$user-password"
	if [ ! -s "$f" ]; then
		echo "start.sh: $f is missing or empty: run deploy/secrets/init.sh" >&2
		exit 1
	fi
	printf '%s,%s,false\n' "$user" "$(cat "$f")" >>"$users"
done
exec /usr/bin/docker-entrypoint.sh /opt/emqx/bin/emqx foreground
