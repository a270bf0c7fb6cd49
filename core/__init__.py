"""The search's Django-free core: the models and their descriptors, image decoding, the HNSW index
and its snapshots, the readers, re-ranking, query views and URL fetching. It imports nothing from
Django or from the site's apps, so that it can be tested and benchmarked on its own; the apps use it."""
