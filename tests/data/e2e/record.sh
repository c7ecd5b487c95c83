#!/usr/bin/env bash
# Record podnat's `inspect --debug-container -o json` of one lab pod per capture mode the lab has
# (redirect, tproxy, nftables) and the pod object the lab's API served: the inputs of
# tests/e2e/capture_setup.py's unit tests. Root, from the repository: bash tests/data/e2e/record.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=tests/data/e2e
py=${PYTHON:-.venv/bin/python}
root=/run/podnat-record-e2e
trap '$py -m podnat lab down --root "$root" >/dev/null 2>&1 || true' EXIT
for mode in redirect tproxy nftables; do
  $py -m podnat lab up --mode "$mode" --root "$root" >/dev/null
  export KUBECONFIG=$($py -m podnat lab kubeconfig --root "$root")
  pod=$(kubectl -n bookinfo get pods -l app=details -o jsonpath='{.items[0].metadata.name}')
  kubectl -n bookinfo get pod "$pod" -o json > "$out/lab-$mode.pod.json"
  $py -m podnat inspect "$pod" -n bookinfo --debug-container -o json > "$out/lab-$mode.inspect.json" || true
  $py -m podnat lab down --root "$root" >/dev/null
done
