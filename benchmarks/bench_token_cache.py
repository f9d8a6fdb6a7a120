"""What the token cache's checksum costs: saving and loading uint16 token arrays of a few sizes.

For each size (millions of tokens, 2 bytes each) it prints the seconds to
- save: np.save plus the SHA-256 of the written file and its checksum file;
- np.load: a plain memory-mapped np.load, what the cache cost before it had checksums;
- first load: TokenCache.load in a process that has not verified the file yet (size check,
  SHA-256 of the whole file, memory map): once per process and file;
- later load: TokenCache.load of a file already verified in this process (a stat, no hash).
The file is in the page cache (just written), as it is for a cache read run after run.

    python benchmarks/bench_token_cache.py                  # 1, 16, 256 M tokens
    python benchmarks/bench_token_cache.py --sizes 1 4
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from medlm.data import cache as cache_mod
from medlm.data.cache import TokenCache


def seconds(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 16, 256], help="M tokens")
    args = parser.parse_args()
    print(f"{'M tokens':>9} {'MB':>7} {'save':>8} {'np.load':>8} {'first load':>11} {'later':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = TokenCache(tmp)
        for m in args.sizes:
            tokens = (np.arange(int(m * 1e6)) % 50257).astype(np.uint16)
            save = seconds(lambda t=tokens: cache.save("bench", "k", t), repeat=1)
            path = cache.path("bench", "k")
            plain = seconds(lambda p=path: np.load(p, mmap_mode="r"))

            def first() -> None:
                cache_mod._verified.clear()  # as in a new process
                assert cache.load("bench", "k") is not None

            cold = seconds(first)
            warm = seconds(lambda: cache.load("bench", "k"))
            mb = tokens.nbytes / 1e6
            print(f"{m:9g} {mb:7.1f} {save:8.4f} {plain:8.4f} {cold:11.4f} {warm:8.5f}")


if __name__ == "__main__":
    main()
