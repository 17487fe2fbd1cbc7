#!/bin/sh
# `interceptor ca install` / `ca uninstall` without touching the host's trust store.
#
# usage: unshare --mount --propagation private ca_trust.sh WORK INTERCEPTOR SOCKET URL CA_PEM
#
# Inside the private mount namespace, every directory the host's trust-store update writes
# (the bundle and hash links, the local certificate directory, the update hooks, which would
# otherwise trigger dpkg) is replaced by a copy under WORK. Then, before the install, after
# it and after the uninstall, one line each:
#   STEP curl=EXIT openssl=EXIT
# curl fetches URL through interceptor (the caller runs this in an enrolled cgroup), so it
# succeeds only when interceptor's CA is trusted; `openssl verify CA_PEM` succeeds only when
# the self-signed CA is in the system store.
set -eu
work=$1 bin=$2 socket=$3 url=$4 ca=$5

for dir in /etc/ssl/certs /usr/local/share/ca-certificates /etc/ca-certificates/update.d; do
    copy="$work/$(echo "$dir" | tr / _)"
    cp -a "$dir" "$copy"
    mount --bind "$copy" "$dir"
done
# The update hooks write outside the trust store (Java's keystore, dpkg triggers).
find /etc/ca-certificates/update.d -mindepth 1 -delete

check() {
    c=0; curl -sS -o /dev/null --max-time 20 "$url" 2>"$work/curl-$1.err" || c=$?
    o=0; openssl verify "$ca" >"$work/openssl-$1.out" 2>&1 || o=$?
    echo "$1 curl=$c openssl=$o"
}

check before
"$bin" --socket "$socket" ca install
check installed
"$bin" --socket "$socket" ca uninstall
check removed
