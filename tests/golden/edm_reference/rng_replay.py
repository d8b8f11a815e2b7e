"""Recovers EDMLoss's random draws without changing their code: the loss draws inside, and returns only the loss."""

from __future__ import annotations

import torch


class RngReplay:
    """Record what an EDMLoss call drew: restore the RNG state saved before it and draw the same again."""

    def __init__(self) -> None:
        self.before = torch.get_rng_state()

    def replay(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """EDMLoss's rnd_normal and noise, and whether they were all it drew; the RNG is left as the call left it."""
        after = torch.get_rng_state()
        torch.set_rng_state(self.before)
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        noise = torch.randn_like(images)
        exact = torch.equal(torch.get_rng_state(), after)      # the loss drew exactly these two, nothing else
        torch.set_rng_state(after)
        return rnd_normal, noise, exact
