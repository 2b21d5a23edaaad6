#!/bin/sh
# Starts Mosquitto for medpipe. The password file is rebuilt from the
# password secrets (one file per MQTT user: mqtt-<user>-password) at every
# start and hashed at once with mosquitto_passwd, so no hash is ever
# committed and rotating a password is: change the secret, restart.
set -eu
secrets=${MQTT_SECRETS_DIR:-/run/secrets}
run=${MOSQUITTO_RUN_DIR:-/mosquitto/run}
conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
umask 077
mkdir -p "$run"
passwd="$run/passwd"
: >"$passwd"
for user in ${MQTT_USERS:-medpipe dashboard replay}; do
	f="$secrets/mqtt-$user-password"
	if [ ! -s "$f" ]; then
		echo "start.sh: $f is missing or empty: run deploy/secrets/init.sh" >&2
		exit 1
	fi
	printf '%s:%s\n' "$user" "$(cat "$f")" >>"$passwd"
done
mosquitto_passwd -U "$passwd"
exec mosquitto -c "$conf"
