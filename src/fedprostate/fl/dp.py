"""Client-level DP at the server: Flower's own DP strategy wrappers behind the project's hooks.

``ProjectHooks`` (admission, decoding, ledger) stays in front; the training hooks of the strategy
behind it go through one of Flower's wrappers around a plain Flower FedAvg/FedProx::

    ProjectHooks.aggregate_train      admit, decode (reference + codec delta), order by name
      -> DPStrategy.aggregate_train   num_sampled_clients = replies actually aggregated
        -> Flower wrapper             server-side: clip each update; client-side: check bits
          -> FedAvg.aggregate_train   mean with equal weights (num-examples = 1 for each)
        <- Flower wrapper             + N(0, (z C / m)^2) on every tensor of the mean

Three details keep the guarantee exact: the wrapper clips relative to the model the sites
actually received (the decoded downlink, not the server's pre-codec copy); the noise is scaled to
the m replies aggregated (Flower scales to the number sampled, which would under-noise a round
with a missing site); every reply weighs 1 (Flower's noise assumes the plain mean); and
adaptive clipping noises with the norm the round was clipped at (see ``_NoiseAtTheNormUsed``).
The adaptive norm's own query (the noisy count of clipped updates) is inside z: Flower raises
the update noise so that the two together are worth z (Andrew et al. 2021). The noise
comes from NumPy's global generator, which Flower uses and this project never seeds.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.differential_privacy import compute_stdv

from fedprostate.config import ConfigError, RunConfig
from fedprostate.fl import wire


class _NoiseAtTheNormUsed:
    """Flower's adaptive wrappers update the clipping norm *before* they add the noise, so a
    shrinking norm noises a round clipped at C_old with z * C_new: less noise than the
    accountant's z. This narrow override noises with the norm the round was clipped at."""

    def aggregate_train(self, server_round, replies):
        self.norm_used = self.clipping_norm
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated):
        updated, self.clipping_norm = self.clipping_norm, self.norm_used
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)
        finally:
            self.clipping_norm = updated


class ServerSideAdaptive(_NoiseAtTheNormUsed, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientSideAdaptive(_NoiseAtTheNormUsed, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


FIXED = {
    "server-fixed": DifferentialPrivacyServerSideFixedClipping,
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
}
ADAPTIVE = {"server-adaptive": ServerSideAdaptive, "client-adaptive": ClientSideAdaptive}
NORM_BIT = "norm_bit"  # what Flower's adaptiveclipping_mod adds to a site's metrics


def make_wrapper(cfg: RunConfig, inner, num_clients: int):
    """Flower's wrapper for ``privacy.client`` around ``inner`` (None for ``local``: the sites
    noise, the server only averages). Adaptive clipping's count noise (clipped_count_stddev,
    Flower's default sites / 20) must exceed z / 2: Flower raises otherwise; so does this, naming
    the key, before any round runs."""
    p = cfg.privacy
    if p.client in FIXED:
        return FIXED[p.client](
            inner,
            noise_multiplier=p.noise_multiplier,
            clipping_norm=p.clip_norm,
            num_sampled_clients=num_clients,
        )
    if p.client in ADAPTIVE:
        count_std = p.clipped_count_stddev or None
        try:
            return ADAPTIVE[p.client](
                inner,
                noise_multiplier=p.noise_multiplier,
                num_sampled_clients=num_clients,
                initial_clipping_norm=p.clip_norm,
                target_clipped_quantile=p.target_quantile,
                clip_norm_lr=p.clip_lr,
                clipped_count_stddev=count_std,
            )
        except ValueError as exc:
            raise ConfigError(
                f"privacy.clipped_count_stddev = {p.clipped_count_stddev} with "
                f"privacy.noise_multiplier = {p.noise_multiplier} and {num_clients} sites: "
                f"{exc} (set privacy.clipped_count_stddev > noise_multiplier / 2)"
            ) from None
    return None


class DPStrategy:
    """Mixin after ``ProjectHooks`` and before a Flower FedAvg/FedProx: the training hooks go
    through ``self.dp`` (a Flower wrapper around a plain instance of the same strategy)."""

    dp = None
    dp_mode = "off"

    def configure_train(self, server_round, arrays, config, grid):
        if self.dp is None:
            return super().configure_train(server_round, arrays, config, grid)
        return self.dp.configure_train(server_round, arrays, config, grid)

    def after_broadcast(self, reference: dict[str, np.ndarray]) -> None:
        """The wrapper clips relative to what the sites decoded, not to the pre-codec model."""
        if self.dp is not None:
            self.dp.current_arrays = wire.to_record(reference)

    def reclip_norm(self) -> float:
        """Client-side clipping, checked again after decoding (a lossy codec can move a clipped
        update by its error); 0 = none (server-side clipping, local DP)."""
        if self.dp_mode.startswith("client-"):
            return float(self.dp.clipping_norm)
        return 0.0

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if self.dp is None:
            return super().aggregate_train(server_round, replies)
        self.dp.num_sampled_clients = len(replies)
        clip = float(self.dp.clipping_norm)
        out = self.dp.aggregate_train(server_round, replies)
        self.ledger.extra["dp"] = {
            "mechanism": self.dp_mode,
            "clip_norm": clip,
            "next_clip_norm": float(self.dp.clipping_norm),
            "noise_std": compute_stdv(self.dp.noise_multiplier, clip, len(replies)),
            "replies": len(replies),
        }
        return out
