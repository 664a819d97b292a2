#!/usr/bin/env bash
# Creates bench/.venv-litellm (gitignored) with LiteLLM's proxy, for the gateway-overhead benchmark
# (bench/overhead.py). It never touches the project's own .venv.
#
# The version is pinned: the newest release whose [proxy] extra resolves from the package index here
# (1.108.8 and later pin litellm-enterprise/litellm-proxy-extras/litellm-proxy builds it does not
# have). Also, LiteLLM releases have been compromised on PyPI before (1.82.7, 1.82.8, 1.107.0,
# all since pulled), so move the pin only to a release you have checked.
# LiteLLM's proxy needs no torch; the install is checked for torch/CUDA wheels and fails if any came in.
set -euo pipefail

LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-litellm"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# uvloop and httptools: uvicorn's fast event loop and HTTP parser (uvicorn[standard]), which Stillroom has too;
# without httptools uvicorn falls back to the pure-Python h11 parser.
# opentelemetry-sdk: LiteLLM 1.108.7's auth path imports its OTel logger on every request and, without the SDK,
# fails that import every time (about 6% of its CPU); with it installed the import is cached (no exporter is set).
"$venv/bin/python" -m pip install --quiet "litellm[proxy]==${LITELLM_VERSION}" uvloop httptools opentelemetry-sdk

if "$venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|nvidia-|triton)' ; then
    echo "error: a torch/CUDA package was installed into $venv; LiteLLM's proxy should not need one" >&2
    exit 1
fi
LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --version
echo "LiteLLM proxy installed in $venv ($(du -sh "$venv" | cut -f1))"
