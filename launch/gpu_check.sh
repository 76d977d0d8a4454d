#!/usr/bin/env bash
# Prepare benchmarks/gpu_check.py for ONE call of the device tool, and print that call.
# Run it here (no GPU needed), from anywhere in the checkout:
#
#   launch/gpu_check.sh                      # the zip and packages into .data/; prints the call
#   launch/gpu_check.sh --with-jax-privacy   # also jax-privacy wheels into .whl/ (downloads)
#
# 1. Copies the CIFAR-10 image-folder zip (../shared/data/cifar10-jpeg.zip, or ZIP=path)
#    to .data/cifar10-jpeg.zip and checks its sha256. .data/ is git-ignored: never commit it.
# 2. Copies the pure-Python packages the trainer needs that the device image lacks
#    (ml_collections, dp_accounting) and tensorboardX (gpu_check stubs it out if it fails
#    to import there) from this checkout's virtualenv (PYTHON=...) into
#    .data/gpu_check_site/, which
#    gpu_check appends to sys.path there, after the machine's own packages.
# 3. --with-jax-privacy: downloads jax-privacy 2.0.0 and the dependencies the device image
#    lacks as cp312 manylinux wheels into .whl/ (git-ignored), as the device README says.
#    NOT TRIED YET (the session that wrote this could not download): if `import jax_privacy`
#    fails there, gpu_check skips its rows and records the import error; nothing else changes.
# 4. Checks that what travels (tracked and untracked-not-ignored files, the two .data paths,
#    .whl) is under the tool's 64 MiB (the zip alone is 49.6 MiB). Only those two paths of
#    .data/ are carried: other files there stay here.
# 5. Prints the device call. Results come back as gpu_check.json, gpu_check.md and
#    gpu_check.log under the reply's files_at folder ($OUT on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-$root/.venv/bin/python}
zip_src=${ZIP:-$root/../shared/data/cifar10-jpeg.zip}
zip_sha=9c0dc2e78b028aa278a974be14e5d33838316689dc67af82432b1fe8bc694aee
with_jp=0
[ "${1:-}" = "--with-jax-privacy" ] && with_jp=1

git check-ignore -q .data/x || { echo ".data/ is not git-ignored: refusing" >&2; exit 1; }
mkdir -p .data
if [ -f "$zip_src" ]; then
  if ! cmp -s "$zip_src" .data/cifar10-jpeg.zip 2>/dev/null; then
    install -m 0644 "$zip_src" .data/cifar10-jpeg.zip
  fi
  echo "$zip_sha  .data/cifar10-jpeg.zip" | sha256sum -c --quiet
else
  echo "warning: $zip_src not found: the DP-RandP case will use synthetic images" >&2
fi

rm -rf .data/gpu_check_site
"$python" - <<'EOF'
import importlib, os, shutil

for name in ("ml_collections", "dp_accounting", "tensorboardX"):
    src = os.path.dirname(importlib.import_module(name).__file__)
    shutil.copytree(src, os.path.join(".data", "gpu_check_site", name),
                    ignore=shutil.ignore_patterns("__pycache__", "*_test.py", "tests"))
    print(f"copied {name} from {src}")
EOF

if [ "$with_jp" = 1 ]; then
  git check-ignore -q .whl/x || { echo ".whl/ is not git-ignored: refusing" >&2; exit 1; }
  rm -rf .whl && mkdir -p .whl
  # Not on the device image (KINDS.md's package list); absl-py, jaxtyping, hypothesis, numpy,
  # optax, scipy, jax are there; ml_collections and dp_accounting travel in
  # .data/gpu_check_site.
  "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl \
    jax-privacy==2.0.0 einshape more-itertools pydantic pydantic-core annotated-types \
    typing-extensions \
    typing-inspection
  echo "jax-privacy's declared requirements (check each is on the device or in .whl):"
  unzip -p .whl/jax_privacy-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v extra || true
fi

size=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
        | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
data=$(du -scb .data/gpu_check_site $([ -f .data/cifar10-jpeg.zip ] && echo .data/cifar10-jpeg.zip) \
       | tail -1 | cut -f1)
whl=0
[ "$with_jp" = 1 ] && whl=$(du -sb .whl | cut -f1)
total=$((size + data + whl))
printf 'travels: tree %.1f MiB + .data paths %.1f MiB + .whl %.1f MiB = %.1f MiB (limit 64)\n' \
  "$(echo "$size/1048576" | bc -l)" "$(echo "$data/1048576" | bc -l)" \
  "$(echo "$whl/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if [ "$total" -ge $((64 * 1048576)) ]; then
  echo "over the 64 MiB limit: leave out .whl, or ignore the large untracked files" >&2
  exit 1
fi

run='set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log'
carry='[".data/cifar10-jpeg.zip", ".data/gpu_check_site"]'
if [ "$with_jp" = 1 ]; then
  run='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || echo "jax-privacy wheels not installed: its rows will be skipped"; '"$run"
  carry='[".data/cifar10-jpeg.zip", ".data/gpu_check_site", ".whl"]'
fi
cat <<EOF

Device call (one run; the check budgets 450 s, at most 480 s, of the 540):
  run(command='$run',
      carry=$carry, timeout_s=540)
EOF
