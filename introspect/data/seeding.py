"""Seeds derived from several parts (run seed, pass, item index, names) for torch generators."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A seed in ``[0, 2**31)`` determined by ``parts`` and, in practice, distinct for distinct
    parts.

    torch's CPU generator keeps only the low 32 bits of a seed, so seeds built as
    ``a * 2**32 + b`` collide for every ``a``; hashing mixes every part into those bits.
    """
    text = "/".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31
