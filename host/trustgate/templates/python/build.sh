#!/bin/sh
# Builds {{name}}.wasm with componentize-py (`pip install -r requirements.txt`).
set -e
cd "$(dirname "$0")"

# The Python next to componentize-py (the venv's), else `python3`.
PY="${PYTHON:-python3}"
if [ -n "$COMPONENTIZE_PY" ] && [ -x "$(dirname "$COMPONENTIZE_PY")/python" ]; then
    PY="$(dirname "$COMPONENTIZE_PY")/python"
fi

# A syntax error as one line, `file:line:column: SyntaxError: message` (componentize-py would
# report it inside a 30-frame backtrace).
"$PY" - <<'CHECK'
import pathlib, sys
for path in sorted(pathlib.Path(".").rglob("*.py")):
    if any(p.startswith(".") or p in ("venv", "__pycache__", "node_modules") for p in path.parts):
        continue
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as e:
        print(f"{e.filename}:{e.lineno}:{e.offset or 0}: SyntaxError: {e.msg}", file=sys.stderr)
        sys.exit(1)
CHECK

"${COMPONENTIZE_PY:-componentize-py}" -d wit -w auth-plugin componentize -p . app -o {{name}}.wasm
echo "built {{name}}.wasm"
