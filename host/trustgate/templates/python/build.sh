#!/bin/sh
# Builds {{name}}.wasm with componentize-py (`pip install -r requirements.txt`).
set -e
cd "$(dirname "$0")"
"${COMPONENTIZE_PY:-componentize-py}" -d wit -w auth-plugin componentize -p . app -o {{name}}.wasm
echo "built {{name}}.wasm"
