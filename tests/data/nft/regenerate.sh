#!/bin/sh
# Regenerate the live nftables dumps from the nft -f goldens (needs root; run from the repo root).
#
# Each golden is loaded into a throwaway network namespace and dumped with `nft list ruleset` and
# `nft -j list ruleset`, the two forms podnat reads from a pod. nft is never run outside the
# namespace. A golden the kernel refuses leaves NAME.FAILED.txt with nft's error instead.
set -eu
GOLDENS=${GOLDENS:-tests/data/istio/goldens/nftables}
OUT=tests/data/nft
NS=podnat-nft-$$
trap 'ip netns delete "$NS" 2>/dev/null || true' EXIT INT TERM

dump() {  # dump SCRIPT NAME
    ip netns add "$NS"
    if ip netns exec "$NS" nft -f "$1" 2>"$OUT/$2.FAILED.txt"; then
        rm -f "$OUT/$2.FAILED.txt"
        ip netns exec "$NS" nft list ruleset >"$OUT/$2.nft-list-ruleset"
        ip netns exec "$NS" nft -j list ruleset >"$OUT/$2.nft-list-ruleset.json"
    fi
    ip netns delete "$NS"
}

mkdir -p "$OUT/cni-ambient-nftables"
for golden in "$GOLDENS"/*.golden "$GOLDENS"/cni-ambient-nftables/*.golden; do
    name=${golden#"$GOLDENS"/}
    dump "$golden" "${name%.golden}"
done
dump "$OUT/default.nft" default
