#!/usr/bin/env bash
# The wheels the hpo image installs from (build/wheels): hpo itself, CPU torch 2.13.0 and every
# dependency, collected by pip on this host with its own configuration (index, find-links). PyTorch's
# CPU index (HPO_TORCH_INDEX, default https://download.pytorch.org/whl/cpu) is added when it is
# reachable, so that pip takes the CPU build of torch rather than PyPI's CUDA one; where it is not
# reachable (an offline mirror that already holds the CPU build), pip's own sources are used.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
index=${HPO_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
extra=()
if "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" "$index" 2>/dev/null; then
    extra=(--extra-index-url "$index")
else
    echo "wheelhouse: $index is not reachable; taking torch from pip's configured sources"
fi
mkdir -p build/wheels
"$python" -m pip wheel -q --wheel-dir build/wheels "${extra[@]}" "torch==2.13.0" .
if ! ls build/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    echo "wheelhouse: warning: the torch wheel is not the CPU build: $(ls build/wheels | grep '^torch-')" >&2
fi
echo "build/wheels: $(ls build/wheels | wc -l) wheels, $(du -sh build/wheels | cut -f1)"
