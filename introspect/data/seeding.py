"""Seeds derived from several parts (run seed, pass, item index, names) for torch generators."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A seed in ``[0, 2**31)`` determined by ``parts`` and, in practice, distinct for distinct
    parts.

    torch's CPU generator keeps only the low 32 bits of a seed, so seeds built as
    ``a * 2**32 + b`` collide for every ``a``; hashing mixes every part into those bits.
    """
    text = "/".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


class RngStream:
    """A private stream of the global torch generators: ``with stream:`` swaps its state in and,
    on leaving, keeps where it got to and puts the surrounding state back.

    Code that draws from the global generators (dropout, shuffled loaders) then draws, inside
    the block, what it would have drawn alone from the state the stream was made at. The CPU
    generator's state is taken when the stream is made; a CUDA device's stream starts from
    ``torch.cuda.manual_seed(cuda_seed)`` the first time the block runs with that device
    current (what ``seed_everything(cuda_seed)`` gives a device not used before training).
    """

    def __init__(self, cuda_seed: int) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_seed = cuda_seed
        self.cuda: dict[int, torch.Tensor] = {}
        self._saved: list[tuple[torch.Tensor, int | None, torch.Tensor | None]] = []

    def __enter__(self) -> RngStream:
        device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        outer_cuda = None if device is None else torch.cuda.get_rng_state(device)
        self._saved.append((torch.get_rng_state(), device, outer_cuda))
        torch.set_rng_state(self.cpu)
        if device is not None:
            if device not in self.cuda:
                torch.cuda.manual_seed(self.cuda_seed)
                self.cuda[device] = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(self.cuda[device], device)
        return self

    def __exit__(self, *exc: object) -> None:
        outer_cpu, device, outer_cuda = self._saved.pop()
        self.cpu = torch.get_rng_state()
        torch.set_rng_state(outer_cpu)
        if device is not None:
            self.cuda[device] = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(outer_cuda, device)
