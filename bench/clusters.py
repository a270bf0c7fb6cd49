#!/usr/bin/env python3
"""How well Browse's clusters follow the shared gallery's categories, and what clustering a large
gallery costs. No Django.

Quality: the 2,698 photos of ../shared/bench/images (five folders: apparel, cat, dog, monkey,
squirrel) embedded with the site's embedder as gallery images (vectors cached, in the cache of
``bench/tag_suggestions.py``), clustered by ``core.kmeans.fit`` as the job does (batches of 2,000
in file order, so folder after folder, as an import reaches the database), each image assigned to its
nearest centroid; purity (the share of images in their cluster's majority folder) and NMI (normalised
mutual information, arithmetic mean of the entropies) against the folders, for several k (5, the
folders; and the job's own count, sqrt(n / 2)), over seeds.

Scale (``--scale N``): a separate process clusters N synthetic vectors resampled from the real ones
(each a random blend of two, with a little noise), made batch by batch on the fly the same each pass, so
that nothing holds them all, as the job reads them from the database a page at a time; with the job's
count for N (capped at 100), the job's batch size and sample. Its time (and, apart, the time of one
pass that only makes the batches, included in the total once per pass) and peak resident memory.

The job (``--job N``, needs ``DATABASE_URL``, and ``DATA_DIR`` for the rest of the site's state):
the database is filled, once, up to N indexed image rows (without files) with such vectors stored as
the site stores them (then analysed, as autovacuum has on a site that grew to N), then the clustering
job runs in a process of its own as a worker runs it
(``jobs.services.job_execute``), and its time and peak memory are reported; then the reads of the
Browse page for an anonymous visitor (every group's visible count, and the cards of the first page)
and the first page of the largest group, each timed.

    .venv/bin/python bench/clusters.py [--seeds 0 1 2] [--k 5 37] [--scale 100000 1000000]
    DATABASE_URL=postgres://... DATA_DIR=/tmp/d .venv/bin/python bench/clusters.py --job 100000 --k
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core import kmeans  # noqa: E402

JOB_BATCH = 2000  # search.clusters.BATCH, without importing Django


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    return sum(int(np.bincount(truth[labels == c]).max()) for c in np.unique(labels)) / len(labels)


def nmi(labels: np.ndarray, truth: np.ndarray) -> float:
    """Normalised mutual information, I(L; T) / ((H(L) + H(T)) / 2)."""
    _, a = np.unique(labels, return_inverse=True)
    _, b = np.unique(truth, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())

    def entropy(p: np.ndarray) -> float:
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    denominator = (entropy(pa) + entropy(pb)) / 2
    return mutual / denominator if denominator else 1.0


def quality(vectors: np.ndarray, truth: np.ndarray, k: int, seed: int) -> tuple[float, float, int]:
    fitted = kmeans.fit(lambda: (vectors[i:i + JOB_BATCH] for i in range(0, len(vectors), JOB_BATCH)), k, seed=seed)
    labels, _ = fitted.assign(vectors)
    return purity(labels, truth), nmi(labels, truth), int(np.bincount(labels).max())


def resampled(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors, each a random blend of two real ones with a little noise. Made here rather than
    with bench/index_scale.py's ``mixed``, whose module imports torch into the process measured."""
    share = rng.random((n, 1), dtype=np.float32)
    blend = share * real[rng.integers(len(real), size=n)] + (1 - share) * real[rng.integers(len(real), size=n)]
    noise = rng.standard_normal(blend.shape, dtype=np.float32)
    return kmeans.normalised(blend + noise * (0.1 / np.linalg.norm(noise, axis=1, keepdims=True)))


def child(count: int, cache: Path, seed: int) -> None:
    """Cluster ``count`` mixed vectors made on the fly; print time and memory as JSON. It reads only the
    cached vectors and imports no model code, so that its memory is the clustering's."""
    real = np.load(cache)["vectors"].astype(np.float32)

    def batches():
        for index, start in enumerate(range(0, count, JOB_BATCH)):
            yield resampled(real, min(JOB_BATCH, count - start), np.random.default_rng([seed, index]))

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    for _ in batches():
        pass
    making = time.perf_counter() - started
    k = kmeans.cluster_count(count)
    started = time.perf_counter()
    fitted = kmeans.fit(batches, k, seed=seed)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sizes = np.zeros(k, dtype=np.int64)
    for batch in batches():
        labels, _ = fitted.assign(batch)
        sizes += np.bincount(labels, minlength=k)
    assign_seconds = time.perf_counter() - started
    print(json.dumps({"count": count, "k": k, "fit_s": fit_seconds, "assign_s": assign_seconds, "making_s": making,
                      "passes": kmeans.EPOCHS + 2, "largest": int(sizes.max()), "empty": int((sizes == 0).sum()),
                      "base_mib": base, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()


def job_fill(count: int, cache: Path) -> None:
    """Indexed image rows, each with a resampled vector of the index's identity, up to ``count``."""
    _django()
    from django.db import connection

    from gallery.models import Image
    from search import runtime
    from search.models import Embedding

    identity = runtime.index_identity()
    real = np.load(cache)["vectors"].astype(np.float32)
    have = Embedding.objects.of(identity).filter(image__state=Image.State.INDEXED).count()
    for start in range(have, count, 5000):
        n = min(5000, count - start)
        names = [f"bench-{start + i}.jpg" for i in range(n)]
        rows = Image.objects.bulk_create([
            Image(original_name=name, sha256=f"{start + i:064x}", format="JPEG", width=8, height=8, byte_size=1,
                  original=f"originals/{name}", thumbnail=f"thumbs/{name}", state=Image.State.INDEXED)
            for i, name in enumerate(names)])
        vectors = resampled(real, n, np.random.default_rng([7, start]))
        Embedding.objects.bulk_create([
            Embedding(image=image, backbone=identity.backbone, backbone_version=identity.backbone_version,
                      dim=identity.dim, vector=vector.tobytes()) for image, vector in zip(rows, vectors, strict=True)])
    if connection.vendor == "postgresql":
        # As on a site that has grown to this size: autovacuum has counted its rows.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(json.dumps({"indexed": max(have, count)}))


def job_child() -> None:
    """Run the clustering job here, then time the Browse page's reads; print JSON."""
    _django()
    from django.contrib.auth.models import AnonymousUser

    from gallery.models import Cluster
    from jobs.models import Job
    from jobs.services import job_execute
    from search import clusters

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    job = clusters.clusters_start()
    started = time.perf_counter()
    job_execute(job_id=job.pk, token=job.claim_token)
    seconds = time.perf_counter() - started
    job = Job.objects.get(pk=job.pk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    visitor = AnonymousUser()
    clustering = clusters.clustering_current()
    assert clustering is not None, "the job published no clustering"
    started = time.perf_counter()
    counts = clusters.cluster_counts_visible(user=visitor, clustering=clustering)
    counting = time.perf_counter() - started
    started = time.perf_counter()
    shown = list(Cluster.objects.filter(pk__in=list(counts)).select_related("clustering").order_by("number")[:24])
    clusters.cluster_cards(user=visitor, clusters=shown, counts=counts)
    carding = time.perf_counter() - started
    started = time.perf_counter()
    images = clusters.cluster_images_visible(user=visitor, cluster=shown[0])
    total, first = images.count(), list(images[:48])
    paging = time.perf_counter() - started
    print(json.dumps({"state": job.state, "summary": job.summary or job.last_error, "job_s": seconds,
                      "base_mib": base, "peak_mib": peak, "counts_s": counting, "cards_s": carding,
                      "page_s": paging, "largest": total, "listed": len(first)}))


def run_job(count: int, cache: Path) -> None:
    for mode in ("--job-fill", "--job-run"):
        out = subprocess.run([sys.executable, __file__, mode, str(count), "--cache", str(cache)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"job over {count:,} indexed images: {result['state']} in {result['job_s']:.1f} s ({result['summary']}); "
          f"peak RSS {result['peak_mib']:.0f} MiB ({result['base_mib']:.0f} MiB before)")
    print(f"Browse, anonymous: visible counts of every group {1000 * result['counts_s']:.0f} ms, cards of the first "
          f"page {1000 * result['cards_s']:.0f} ms; the largest group's first page ({result['listed']} of "
          f"{result['largest']:,}) {1000 * result['page_s']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tag-suggestions-bench.npz"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, nargs="*", default=None,
                    help="cluster counts (default: 5 and the job's; none: no quality figures)")
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="also time clustering this many vectors")
    ap.add_argument("--job", type=int, default=0, help="also run the clustering job over this many images")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--job-fill", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--job-run", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.cache, args.seeds[0])
        return
    if args.job_fill:
        job_fill(args.job_fill, args.cache)
        return
    if args.job_run:
        job_child()
        return
    # First: a child's peak memory starts from its parent's at the fork (Linux keeps ru_maxrss across
    # exec), so they start before this process loads the gallery's vectors and feature maps.
    for count in args.scale:
        out = subprocess.run([sys.executable, __file__, "--child", str(count), "--cache", str(args.cache),
                              "--seeds", str(args.seeds[0])], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['count']:,} vectors, k={r['k']}: fit {r['fit_s']:.1f} s + assign {r['assign_s']:.1f} s "
              f"({r['passes']} passes, each including {r['making_s']:.1f} s to make the synthetic batches); "
              f"peak RSS {r['peak_mib']:.0f} MiB ({r['base_mib']:.0f} MiB before); largest cluster "
              f"{r['largest']:,}, {r['empty']} empty")
    if args.job:
        run_job(args.job, args.cache)
    if args.k == []:
        return
    from bench.tag_suggestions import describe_gallery

    vectors, _, categories = describe_gallery(args.images, args.cache)
    vectors = vectors.astype(np.float32)
    names = sorted(set(categories))
    truth = np.array([names.index(c) for c in categories])
    print(f"{len(vectors)} images in {len(names)} folders ({', '.join(names)}), seeds {args.seeds}")
    for k in args.k or [len(names), kmeans.cluster_count(len(vectors))]:
        runs = [quality(vectors, truth, k, seed) for seed in args.seeds]
        p, n, largest = (np.array([r[i] for r in runs]) for i in range(3))
        print(f"k={k:3d}: purity {p.mean():.3f} ({p.min():.3f}-{p.max():.3f}), NMI {n.mean():.3f} "
              f"({n.min():.3f}-{n.max():.3f}), largest cluster {int(largest.max())} images")


if __name__ == "__main__":
    main()
