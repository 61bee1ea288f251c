#!/usr/bin/env bash
# Builds a Go program from the Go module proxy (no other download site is
# reachable here) into $PODIAM_TOOLS (default ~/.cache/podiam/tools) the first
# time, and prints its path; later calls only print it.
#   install-go-tool.sh PACKAGE@VERSION [NAME]
# NAME (default: the package's last element) is the cached file's name: put
# the version in it to cache by version.
set -euo pipefail
spec="$1"
package="${spec%@*}"
name="${2:-${package##*/}}"
tools="${PODIAM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/podiam/tools}"
if [ -x "$tools/$name" ]; then echo "$tools/$name"; exit 0; fi
echo "install-go-tool: building $spec with Go" >&2
mkdir -p "$tools"
work="$(mktemp -d "$tools/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
GOBIN="$work" CGO_ENABLED=0 GOFLAGS=-p=2 go install -trimpath -ldflags="-s -w" "$spec" >&2
mv "$work/${package##*/}" "$tools/$name"
echo "$tools/$name"
