#!/usr/bin/env bash
# Build a CPU environment that runs TorchEasyRec's real code (tzrec-sekai 0.9.6 from the registry, a
# TorchEasyRec fork) for recbuild's tzrec kinds and tests. Usage:
#   tools/tzrec_cpu_env/install.sh VENV_DIR [PYTHON]
# PYTHON (default python3) must be Python 3.11. About 95 s and 1.7 GB on a 2-core machine.
# Then: export TZREC_PYTHON=VENV_DIR/bin/python   (see docs/tzrec.md)
set -euo pipefail
VENV=${1:?usage: install.sh VENV_DIR [PYTHON]}
PY=${2:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)

"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "tzrec-sekai 0.9.6 needs Python 3.11, got " + sys.version.split()[0])'
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch 2.13.0 is the CPU wheel pip finds on local disk (upstream's pin, 2.8.0, is a CUDA build).
"${PIP[@]}" -r "$HERE/requirements.txt"
# torchrec declares fbgemm-gpu (the multi-GB CUDA wheel); fbgemm-gpu-cpu, pinned above, provides it.
"${PIP[@]}" --no-deps torchrec==1.3.0 tzrec-sekai==0.9.6

# Stand-ins for pyfg / graphlearn / common_io (no public registry has them): importable, and any use
# raises and is logged to $RECBUILD_TZREC_SHIM_LOG. A .pth puts them on the path as a fallback finder.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/recbuild_shims"
cp "$HERE/shims/recbuild_tzrec_shims.py" "$VENV/recbuild_shims/"
printf '%s\n%s\n' "$(cd "$VENV/recbuild_shims" && pwd)" \
  "import recbuild_tzrec_shims; recbuild_tzrec_shims.install()" > "$SITE/recbuild_tzrec_shims.pth"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, torchrec, fbgemm_gpu, tzrec  # noqa: F401  (tzrec imports pyfg/graphlearn: stand-ins)
from tzrec import main  # noqa: F401
print(f"tzrec environment ok: tzrec-sekai {md.version('tzrec-sekai')}, torch {torch.__version__}, "
      f"torchrec {md.version('torchrec')}")
EOF
