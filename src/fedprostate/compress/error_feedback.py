"""Error feedback for compressed client updates (EF-SGD style, Seide et al. 2014 /
Karimireddy et al. 2019 — not EF21).

Each round the client sends C(Δ + e) instead of C(Δ) and keeps e ← (Δ + e) − C(Δ + e), i.e. what
the codec dropped is carried into the next round. Summed over rounds, the decoded updates then
differ from the true ones by exactly the current residual, so biased codecs (top-k, ternary
round-to-nearest) no longer drift. (EF21 would instead keep a running estimate of the gradient on
both ends and send compressed differences; that needs server-side state per client.)

The residual is per-site persistent state: `save` / `load` write it as safetensors, atomically, so
a resumed client continues with the residual it had.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file


class ErrorFeedback:
    """Residual memory: ``to_send = ef.compensate(update)``; encode/decode;
    ``ef.update(to_send, decoded)``."""

    def __init__(self, residual: Mapping[str, np.ndarray] | None = None) -> None:
        self._residual: dict[str, np.ndarray] = {
            name: np.array(value, dtype=np.float32) for name, value in (residual or {}).items()
        }

    @property
    def residual(self) -> dict[str, np.ndarray]:
        """A copy of the stored residual (name → float32 tensor)."""
        return {name: value.copy() for name, value in self._residual.items()}

    def compensate(self, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """update + residual (a tensor without residual yet gets none)."""
        compensated = {}
        for name, value in update.items():
            array = np.asarray(value, dtype=np.float32)
            residual = self._residual.get(name)
            if residual is None:
                compensated[name] = array.copy()
                continue
            if residual.shape != array.shape:
                raise ValueError(
                    f"error-feedback residual for {name!r} has shape {residual.shape}, the update "
                    f"{array.shape} (model changed? delete the stale error-feedback state)"
                )
            compensated[name] = array + residual
        return compensated

    def update(
        self, compensated: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]
    ) -> None:
        """Store residual = compensated − decoded for every tensor sent."""
        if set(compensated) != set(decoded):
            raise ValueError(
                "error feedback: compensated and decoded tensors differ in names: "
                f"{sorted(set(compensated) ^ set(decoded))[:5]}"
            )
        for name, sent in compensated.items():
            sent = np.asarray(sent, dtype=np.float32)
            received = np.asarray(decoded[name], dtype=np.float32)
            if sent.shape != received.shape:
                raise ValueError(
                    f"error feedback: {name!r} sent as {sent.shape}, decoded as {received.shape}"
                )
            self._residual[name] = sent - received

    def residual_norm(self) -> float:
        """L2 norm of the whole residual (for logging)."""
        return float(
            np.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2)) for r in self._residual.values()))
        )

    def reset(self) -> None:
        self._residual.clear()

    def save(self, path: str | os.PathLike) -> None:
        """Write the residual as safetensors (temp file + rename, so a crash leaves the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {name: np.ascontiguousarray(value) for name, value in self._residual.items()}
        save_file(tensors, str(tmp), metadata={"format": "fedprostate-error-feedback-v1"})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, missing_ok: bool = False) -> ErrorFeedback:
        """Read a saved residual; with `missing_ok`, a missing file gives an empty one."""
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls()
            raise FileNotFoundError(f"no error-feedback state at {path}")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"cannot read error-feedback state {path}: {error}") from error
        for name, value in tensors.items():
            if value.dtype != np.float32:
                raise ValueError(
                    f"error-feedback state {path}: {name!r} is {value.dtype}, not float32"
                )
        return cls(tensors)
