#!/usr/bin/env bash
# Puts terraform v1.5.7 (the last MPL-licensed release) into $PODIAM_TOOLS
# and prints its path; the tests use only `terraform fmt`. Built from the Go
# module proxy (install-go-tool.sh): about 3 minutes on 2 cores the first
# time, then cached.
set -euo pipefail
exec bash "$(dirname "$0")/install-go-tool.sh" github.com/hashicorp/terraform@v1.5.7 terraform
