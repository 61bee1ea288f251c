#!/usr/bin/env bash
# Puts terraform v1.5.7 (the last MPL-licensed release) into $PODIAM_TOOLS
# and prints its path; the tests use only `terraform fmt`. Built from the Go
# module proxy, as no other download site is reachable here: about 3 minutes
# on 2 cores the first time, then cached.
set -euo pipefail
tools="${PODIAM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/podiam/tools}"
if [ -x "$tools/terraform" ]; then echo "$tools/terraform"; exit 0; fi
echo "install-terraform: building github.com/hashicorp/terraform@v1.5.7 with Go (about 3 min)" >&2
mkdir -p "$tools"
GOBIN="$tools" CGO_ENABLED=0 GOFLAGS=-p=2 go install -trimpath -ldflags="-s -w" github.com/hashicorp/terraform@v1.5.7 >&2
echo "$tools/terraform"
