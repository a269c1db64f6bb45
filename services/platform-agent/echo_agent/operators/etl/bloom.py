"""A Bloom filter: a bit array and k hash functions, sized for n items at error rate p.

``m = ceil(-n ln p / (ln 2)^2)`` bits and ``k = round(m / n * ln 2)`` hashes (at least
one), the standard optimum. The k bit positions come from one BLAKE2b digest by double
hashing (Kirsch and Mitzenmacher): ``h1 + i * h2 mod m``. Items are strings (UTF-8).
No false negatives; false positives with probability about p once n items are in.
"""

from __future__ import annotations

import hashlib
import math

MAX_BITS = 8 * 512 * 1024 * 1024  # 512 MiB of bits: a config asking for more is a mistake


class BloomFilter:
    def __init__(self, expected: int, error_rate: float) -> None:
        if expected < 1:
            raise ValueError("expected must be at least 1")
        if not 0 < error_rate < 1:
            raise ValueError("error_rate must be between 0 and 1")
        bits = math.ceil(-expected * math.log(error_rate) / (math.log(2) ** 2))
        if bits > MAX_BITS:
            raise ValueError(
                f"a filter for {expected} items at error rate {error_rate} needs {bits} bits "
                f"(more than {MAX_BITS}); lower expected or raise error_rate"
            )
        self.size = max(bits, 8)
        self.hashes = max(1, round(self.size / expected * math.log(2)))
        self.bits = bytearray((self.size + 7) // 8)
        self.count = 0

    def _positions(self, item: str) -> list[int]:
        digest = hashlib.blake2b(item.encode("utf-8"), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1  # odd, so the probes do not collapse
        m = self.size
        return [(h1 + i * h2) % m for i in range(self.hashes)]

    def add(self, item: str) -> None:
        for p in self._positions(item):
            self.bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, item: str) -> bool:
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(item))
