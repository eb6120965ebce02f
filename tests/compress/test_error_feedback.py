"""Error feedback (issue 7 §1/§4): sums of decoded updates track the true sums; state persists."""

from __future__ import annotations

import numpy as np
import pytest

from fedprostate.compress import delta
from fedprostate.compress.codecs import CodecSpec, decode, encode
from fedprostate.compress.error_feedback import ErrorFeedback

SHAPES = {"lora_A": (8, 96), "lora_B": (192, 8)}
STEPS = 50


def _updates(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Noisy updates around a fixed direction, as successive local updates look."""
    rng = np.random.default_rng(seed)
    drift = {name: rng.normal(0, 1e-3, size=shape) for name, shape in SHAPES.items()}
    return [
        {
            name: (drift[name] + rng.normal(0, 1e-3, size=shape)).astype(np.float32)
            for name, shape in SHAPES.items()
        }
        for _ in range(STEPS)
    ]


def _run(codec: str, use_ef: bool, seed: int = 0):
    """Returns (‖Σdecoded − Σtrue‖ after each step, largest ‖residual‖ seen, final residual)."""
    ef = ErrorFeedback() if use_ef else None
    rng = np.random.default_rng(seed + 100)
    true_sum = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    sent_sum = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    gaps, residual_norms = [], [0.0]
    for update in _updates(seed):
        to_send = ef.compensate(update) if ef else update
        decoded = decode(encode(to_send, codec, rng), codec, SHAPES)
        if ef:
            ef.update(to_send, decoded)
            residual_norms.append(ef.residual_norm())
        for name in SHAPES:
            true_sum[name] += update[name]
            sent_sum[name] += decoded[name]
        gaps.append(_norm({n: sent_sum[n] - true_sum[n] for n in SHAPES}))
    return np.array(gaps), max(residual_norms), (ef.residual if ef else None), true_sum, sent_sum


def _norm(tensors) -> float:
    return float(np.sqrt(sum(np.sum(np.square(t, dtype=np.float64)) for t in tensors.values())))


@pytest.mark.parametrize(
    "codec", ["topk:0.05", "int2:block=64", "topk:0.1+int4:block=64", "int2:block=64:stochastic"]
)
def test_error_feedback_sum_tracks_true_sum(codec):
    gaps, max_residual, residual, true_sum, sent_sum = _run(codec, use_ef=True)
    # Telescoping: Σ decoded = Σ true − final residual (up to float32 rounding).
    for name in SHAPES:
        np.testing.assert_allclose(sent_sum[name], true_sum[name] - residual[name], atol=1e-5)
    # So the gap never exceeds one step's residual...
    assert gaps.max() <= max_residual * (1 + 1e-3) + 1e-5
    # ...and plateaus instead of growing with the number of steps.
    assert gaps[-1] < 1.2 * gaps[24]
    assert gaps[-1] < 0.2 * _norm(true_sum)


@pytest.mark.parametrize("codec", ["topk:0.05", "int2:block=64"])
def test_without_error_feedback_biased_codecs_drift(codec):
    """Negative control: the same biased codecs without EF drift away, growing with the steps."""
    gaps_ef, *_ = _run(codec, use_ef=True)
    gaps, *_, true_sum, _ = _run(codec, use_ef=False)
    assert gaps[-1] > 3 * gaps_ef[-1]
    assert gaps[-1] > 1.5 * gaps[24]  # keeps growing (~linearly): a drift, not a bounded error
    assert gaps[-1] > 0.2 * _norm(true_sum)


def test_ef_save_load_round_trip_and_resume(tmp_path):
    """A client that saves, restarts and loads its residual sends exactly the same bytes."""
    updates = _updates(3)[:30]
    codec = "int2:block=64:stochastic"

    def step(ef, update, seed):
        to_send = ef.compensate(update)
        wire = encode(to_send, codec, np.random.default_rng(seed))
        ef.update(to_send, decode(wire, codec, SHAPES))
        return wire

    straight = ErrorFeedback()
    wires_straight = [step(straight, u, i) for i, u in enumerate(updates)]

    resumed = ErrorFeedback()
    wires_resumed = [step(resumed, u, i) for i, u in enumerate(updates[:20])]
    path = tmp_path / "site-a" / "error_feedback.safetensors"
    resumed.save(path)
    loaded = ErrorFeedback.load(path)
    for name, value in resumed.residual.items():
        assert loaded.residual[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.residual[name], value)
    wires_resumed += [step(loaded, u, 20 + i) for i, u in enumerate(updates[20:])]

    for a, b in zip(wires_straight, wires_resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not list(tmp_path.glob("**/*.tmp"))


def test_ef_load_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        ErrorFeedback.load(tmp_path / "nope.safetensors")
    assert ErrorFeedback.load(tmp_path / "nope.safetensors", missing_ok=True).residual == {}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ErrorFeedback.load(bad)
    empty = tmp_path / "empty.safetensors"
    ErrorFeedback().save(empty)
    assert ErrorFeedback.load(empty).residual == {}


def test_ef_compensate_and_update_semantics():
    ef = ErrorFeedback()
    update = {"w": np.array([1.0, 2.0], np.float32)}
    assert ef.compensate(update)["w"].tolist() == [1.0, 2.0]  # no residual yet
    ef.update({"w": np.array([1.0, 2.0])}, {"w": np.array([0.75, 2.0])})
    np.testing.assert_array_equal(ef.residual["w"], [0.25, 0.0])
    np.testing.assert_array_equal(ef.compensate(update)["w"], [1.25, 2.0])
    assert ef.residual_norm() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        ef.compensate({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="differ in names"):
        ef.update({"w": np.zeros(2)}, {"v": np.zeros(2)})


def test_flat_delta_with_error_feedback():
    """One client, rounds of: receive global, train (here: add a local update), send compressed
    delta with EF; the server's global trails global₀ + Σ updates by exactly the residual."""
    rng = np.random.default_rng(5)
    start = {"w": rng.normal(size=(16, 64)).astype(np.float32)}
    ef = ErrorFeedback()
    global_model, ideal = start, start["w"].astype(np.float64)
    for _ in range(20):
        local_update = rng.normal(1e-3, 1e-3, size=(16, 64)).astype(np.float32)
        trained = {"w": global_model["w"] + local_update}
        spec = CodecSpec.parse("topk:0.05")
        sent = delta.pack_uplink(trained, global_model, spec, np.random.default_rng(0), ef)
        global_model = delta.unpack_uplink(sent, spec, global_model)
        ideal += local_update
    residual = delta.unflatten(ef.residual[delta.FLAT], {"w": (16, 64)})["w"]
    np.testing.assert_allclose(global_model["w"] + residual, ideal, atol=1e-5)
    assert ef.residual_norm() > 0
    # fp32 loses nothing: the residual is left as it was.
    before = ef.residual[delta.FLAT]
    delta.pack_uplink(trained, global_model, CodecSpec.parse("fp32"), None, ef)
    np.testing.assert_array_equal(ef.residual[delta.FLAT], before)
