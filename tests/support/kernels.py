"""A user's own MCMC kernel, as `sampler.kernel=support.kernels:UniformResample` names it: the plug-in the kernel
tests put through the same detailed-balance check as the built-in kernels."""

import torch

from modeldiff.method.kernels import Kernel, mh_accept


class UniformResample(Kernel):
    """Resample one uniformly chosen position from all allowed tokens, the current one included: a symmetric
    proposal, so the Metropolis–Hastings ratio is exp(−β Δz)."""

    @staticmethod
    def uniform_shapes(space):
        return {"position": 1, "token": 1, "accept": 1}

    def step(self, state, beta, uniforms):
        n, length = state.slots.shape
        pos = (uniforms["position"][:, 0] * length).long().clamp_(max=length - 1)
        tok = (uniforms["token"][:, 0] * self.space.n_tokens).long().clamp_(max=self.space.n_tokens - 1)
        proposal = state.slots.clone()
        proposal[torch.arange(n), pos] = tok
        z_new = self.score(proposal)
        accepted = mh_accept(-beta * (z_new - state.z), uniforms["accept"][:, 0])
        state.slots[accepted] = proposal[accepted]
        state.z[accepted] = z_new[accepted]
        return accepted
