#!/bin/sh
# Creates the secrets the shipped deployments read, once, in this directory
# (git-ignored): random passwords and keys, never committed. Existing files
# are kept, so running it again is safe. Run from anywhere:
#   sh deploy/secrets/init.sh
#
# The directory is 0700 (only you on this host); the files are 0444 so the
# containers' own users can read them: Docker Compose bind-mounts a file
# secret with the host file's owner and mode (uid/gid/mode in compose are
# honoured only by Swarm), and medpipe (uid 65532), Node-RED (1000), EMQX
# (1000) and Mosquitto (1883) each run as a different user.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
chmod 700 "$dir"
umask 077
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
for name in mqtt-medpipe-password mqtt-dashboard-password mqtt-replay-password \
	node-red-admin-password node-red-credential-secret; do
	f="$dir/$name"
	if [ -s "$f" ]; then
		continue
	fi
	random >"$f"
	chmod 0444 "$f"
	echo "created $f"
done
echo "Node-RED editor: user admin, password in $dir/node-red-admin-password"
