#!/usr/bin/env bash
# Downloads, here, the wheels that bench/gpu_check.sh installs on the H200 device machine, into .whl/
# (git-ignored), and prints their total size.
#
# Why: that machine reaches no package registry. Its image has torch 2.11, transformers, Pillow,
# numpy, accelerate, safetensors, huggingface-hub, prometheus-client (KINDS.md's package list in
# the device tool's notes), but not diffusers, pydantic, pydantic-settings, nats-py or
# OpenTelemetry, which the worker's code imports. protobuf, grpcio and typing-extensions are
# there in versions nobody has read; the generated gRPC stubs (easel/) need protobuf >= the
# protoc that made them and grpcio >= grpcio-tools, so they travel too, in this venv's versions.
#
# Versions: exactly those of this checkout's venv ($PYTHON), the ones the CPU test
# (tests/unit/test_gpu_check.py) ran the same code with. Wheels for the device's Python
# ($GPU_PYTHON_VERSION, 3.12 there) and manylinux x86-64; --no-deps, so every needed one is named.
#
#   bench/gpu_wheels.sh            # then: the device call in bench/README.md, "GPU check (issue 19)"
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
PYVER=${GPU_PYTHON_VERSION:-3.12}
DEST=${GPU_WHEELS_DIR:-.whl}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-40} # the whole tree that travels may be 64 MiB

# Distributions the bench's imports need that the device lacks (or has in unknown versions).
# pydantic-core is pinned by pydantic; opentelemetry-sdk by -api and -semantic-conventions.
PACKAGES=(
    diffusers
    pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
    typing-extensions
    nats-py
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
    protobuf grpcio
)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
        echo "gpu_wheels: $name is not installed in $PYTHON's environment; install the project first" >&2
        exit 2
    }
    pins+=("$name==$version")
done

platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
    manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl # one version of each: two would stop the install there
# (grep: pip's notes about index folders this machine's pip configuration names but lacks.)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DEST" "${pins[@]}" 2> >(grep -v "is ignored: it is neither a file" >&2)

# The same install the device makes, as a dry run for its Python and platform: every wheel fits.
"$PYTHON" -m pip install -q --dry-run --ignore-installed --no-index --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp "${platforms[@]}" --target "$(mktemp -d)" "$DEST"/*.whl

count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "gpu_wheels: $count wheels for ${#PACKAGES[@]} packages in $DEST" >&2
    exit 1
fi
bytes=$(cat "$DEST"/*.whl | wc -c)
ls -l "$DEST"/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu_wheels: $count wheels, $mib MiB in all, for Python $PYVER manylinux x86-64, in $DEST/"
if awk -v b="$bytes" -v l="$LIMIT_MIB" 'BEGIN { exit !(b > l * 1048576) }'; then
    echo "gpu_wheels: over $LIMIT_MIB MiB: the working tree that travels to the device may be 64 MiB" >&2
    exit 1
fi
