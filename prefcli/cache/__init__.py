"""Everything prefcli keeps between runs in a cache dir (--cache-dir, else the user cache dir):

- `vectors`: the content-addressed VectorStore (embeddings, reward scores, served:/judge: answers);
- `memo`: the one memoise helper over it (the embedding and score caches);
- `ingest`: ingest's per-file memo of parsed pairs;
- `graphs`: stored dedup neighbour graphs;
- `maintenance`: what `prefcli cache info|prune` lists and trims.
"""
