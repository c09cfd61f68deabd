#!/usr/bin/env bash
# The packages a GPU machine with no package index lacks, as one .tar.xz to unpack onto PYTHONPATH there.
#
#   bash benchmarks/pack_site.sh OUT.tar.xz [PYTHON_VERSION]     # default 3.12, the device image's
#   # there: python3 -c "import tarfile; tarfile.open('OUT.tar.xz').extractall('/tmp/site')"
#   #        PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_bench.py --cache /tmp/ecmf-hf
#
# Made for the 2026-12-04 H200 run (benchmarks/README.md): that image has torch, transformers, pandas,
# pyarrow, OpenCV and most small packages, but not Ray, decord, PyAV or omegaconf. What travels to it is
# capped at 64 MiB, and Ray's wheel alone is 79 MB, so Ray's parts that extraction and training never load
# are left out (Java jars, RLlib, Serve, LLM, the dashboard's web front end), its binaries are stripped of
# symbols, and everything is packed with xz -9: about 55 MiB.
set -euo pipefail
out=$(realpath "$1")
py=${2:-3.12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wheels=(ray==2.60.0 decord==0.6.0 av==18.1.0 omegaconf==2.4.0
  # Ray's and ray[train,tune]'s own needs that the image lacks; typing_extensions for pydantic's floor.
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0 tensorboardX==2.6.5 jiter==0.19.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux2010_x86_64 -d "$work/wheels" "${wheels[@]}"
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$work/site"
done
cd "$work/site"
rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client
strip --strip-unneeded ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server
find . -name __pycache__ -type d -prune -exec rm -rf {} +
tar cf - . | xz -T0 -9 >"$out"
du -h "$out"
