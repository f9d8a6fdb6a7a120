"""The one seeded split of every dataset: shuffle the keys, fill the held-out splits, train keeps
the rest.

A key is whatever must stay on one side: a record (PubMedQA, MedQuAD), a prompt with all its
responses (instruction data), an original question with both of its pairs (question pairs). The
same keys, sizes and seed give the same split on every machine and Python version.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def seeded_split(
    weights: Sequence[int], sizes: Mapping[str, int], seed: int
) -> dict[str, list[int]]:
    """Indices of the keys in each split, in source order.

    ``weights[i]`` is how much key ``i`` counts (1 for a record, the number of records of a group).
    After a seeded shuffle of the keys, the splits of ``sizes`` take keys in their order until their
    weight reaches their size; ``"train"`` takes the rest.
    """
    order = list(range(len(weights)))
    random.Random(seed).shuffle(order)
    keys = iter(order)
    out: dict[str, list[int]] = {}
    for name, size in sizes.items():
        taken, filled = [], 0
        while filled < size:
            i = next(keys, None)
            if i is None:
                break
            taken.append(i)
            filled += weights[i]
        out[name] = sorted(taken)
    out["train"] = sorted(keys)
    return out
