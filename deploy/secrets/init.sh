#!/bin/sh
# Creates the secrets the shipped deployments read, once: random passwords
# and keys, never committed. Existing files are kept, so running it again is
# safe. Compose reads them from deploy/secrets (git-ignored):
#   sh deploy/secrets/init.sh
# a systemd host from /etc/medpipe/secrets:
#   sudo sh deploy/secrets/init.sh /etc/medpipe/secrets
#
# Compose: the directory is 0700 (only you on this host) and the files
# 0444, so the containers' own users can read them: Docker Compose
# bind-mounts a file secret with the host file's owner and mode (uid, gid
# and mode in compose are honoured only by Swarm), and medpipe (uid 65532),
# Node-RED (1000), EMQX (1000), Mosquitto (1883) and NATS each run as a
# different user. systemd (a directory given): files 0400 root, handed to
# each unit with LoadCredential=.
set -eu
if [ $# -gt 0 ]; then
	dir=$1
	mode=0400
	mkdir -p "$dir"
else
	dir=$(cd "$(dirname "$0")" && pwd)
	mode=0444
fi
chmod 700 "$dir"
umask 077
# "mp" first: nats-server reads a secret from the environment as a value,
# and one starting with a digit would be taken for a number.
random() { printf 'mp'; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
for name in nats-ingest-password nats-decrypt-password nats-publish-password \
	nats-replay-password nats-admin-password nats-dashboard-password jetstream-key \
	mqtt-medpipe-password mqtt-dashboard-password mqtt-replay-password \
	node-red-admin-password node-red-credential-secret; do
	f="$dir/$name"
	if [ -s "$f" ]; then
		continue
	fi
	random >"$f"
	chmod "$mode" "$f"
	echo "created $f"
done
echo "Node-RED editor: user admin, password in $dir/node-red-admin-password"
