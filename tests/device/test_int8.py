"""The int8 export and model: weight / feature quantisation, exact BN folding, closeness to the
float model, LeanTTA on int8 activations, the artifact format, and no deprecation noise."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.ao.nn.intrinsic.quantized  # noqa: F401  (for the isinstance check)
from support import make_tiny_bundle

from device_client.runtime import load_model
from server.export import int8_payload
from shared.models.checkpoint import bundle_to_bytes
from shared.models.int8 import (
    activation_qparams,
    build_int8_model,
    compress_features,
    decompress_features,
    fold_quantized,
    int8_payload_from_bytes,
    int8_payload_to_bytes,
    is_int8_artifact,
    quantize_weight_per_channel,
)
from shared.models.leantta import LeanTTANorm

ENGINES = [
    e for e in ("qnnpack", "x86", "fbgemm") if e in torch.backends.quantized.supported_engines
]


def realistic_bundle(seed: int = 0):
    """The tiny bundle with non-trivial BatchNorm statistics (as a trained model has)."""
    bundle = make_tiny_bundle(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in bundle.model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm3d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(1.0 + 0.3 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return bundle


def clips(n: int, seed: int = 1, shift: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    rgb = (torch.rand(n, 8, 3, 32, 32, generator=gen) * 0.8 + shift).clamp(0, 1)
    flow = torch.randn(n, 7, 2, 32, 32, generator=gen) * 0.3
    return rgb, flow


@pytest.fixture(scope="module")
def exported():
    bundle = realistic_bundle()
    rgb, flow = clips(24)
    data = int8_payload_to_bytes(int8_payload(bundle, rgb, flow))
    return bundle, data


def test_weight_quantisation_is_symmetric_per_channel():
    w = torch.randn(5, 3, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.0]).reshape(
        5, 1, 1, 1, 1
    )
    q, scale = quantize_weight_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    expected_scale = w.abs().reshape(5, -1).amax(1) / 127
    assert torch.allclose(scale[:4], expected_scale[:4])
    error = (q.float() * scale.reshape(-1, 1, 1, 1, 1) - w).abs().reshape(5, -1).amax(1)
    assert (error <= scale / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="float weight"):
        quantize_weight_per_channel(torch.ones(3, dtype=torch.int8))


def test_activation_qparams_cover_the_range_and_zero():
    scale, zp = activation_qparams(-1.0, 3.0, 255)
    assert scale == pytest.approx(4.0 / 255) and zp == round(1.0 / scale)
    assert activation_qparams(0.5, 2.0, 127)[1] == 0  # widened to include 0
    with pytest.raises(ValueError, match="finite"):
        activation_qparams(0.0, float("inf"))


def test_reference_features_compress_within_half_a_step():
    f = torch.rand(200, 16) * torch.linspace(0.1, 5, 16)
    packed = compress_features(f)
    assert packed["codes"].dtype == torch.uint8
    assert ((decompress_features(packed) - f).abs() <= packed["scale"] / 2 + 1e-6).all()


def test_folding_into_int8_weights_is_exact():
    w = torch.randn(6, 2, 3, 3, 3)
    q, scale = quantize_weight_per_channel(w)
    bn = {
        "mean": torch.randn(6),
        "var": torch.rand(6) + 0.1,
        "weight": torch.tensor([1.5, -0.7, 0.3, -2.0, 1.0, 0.9]),
        "bias": torch.randn(6),
        "eps": 1e-5,
    }
    q_f, scale_f, bias = fold_quantized(q, scale, bn)
    factor = bn["weight"] / torch.sqrt(bn["var"] + 1e-5)
    before = q.float() * scale.reshape(-1, 1, 1, 1, 1) * factor.reshape(-1, 1, 1, 1, 1)
    after = q_f.float() * scale_f.reshape(-1, 1, 1, 1, 1)
    assert torch.allclose(before, after, atol=1e-6)
    assert torch.allclose(bias, bn["bias"] - bn["mean"] * factor)
    assert int(q_f.abs().max()) <= 127


@pytest.mark.parametrize("engine", ENGINES)
def test_int8_model_is_close_to_float(exported, engine):
    bundle, data = exported
    rgb, flow = clips(6, seed=7)
    model = build_int8_model(int8_payload_from_bytes(data), engine=engine)
    with torch.inference_mode():
        z_float, z_int8 = bundle.model.embed(rgb, flow), model.embed(rgb, flow)
        logits_float, logits_int8 = bundle.model(rgb, flow), model(rgb, flow)
    assert z_int8.dtype == torch.float32 and z_int8.shape == z_float.shape
    # a 7/8-bit pipeline through 4 quantised layers: a few % of the activation range
    assert (z_int8 - z_float).abs().max() <= 0.08 * z_float.abs().max()
    assert (logits_int8 - logits_float).abs().max() <= 0.08 * logits_float.abs().max() + 1e-3
    # and it really is int8: torch's quantised kernels, not float modules with fake quantisation
    conv = model.rgb_encoder.blocks[0].conv
    assert isinstance(conv, torch.ao.nn.intrinsic.quantized.ConvReLU3d)
    with torch.inference_mode():
        q = torch.quantize_per_tensor(rgb.transpose(1, 2).contiguous(), 1 / 255, 0, torch.quint8)
        assert conv(q).dtype == torch.quint8


def test_unfused_blocks_equal_folded_blocks_up_to_quantisation(exported):
    _bundle, data = exported
    payload = int8_payload_from_bytes(data)
    rgb, flow = clips(4, seed=3)
    with torch.inference_mode():
        folded = build_int8_model(payload, adapt_layers=0, engine="qnnpack").embed(rgb, flow)
        unfused = build_int8_model(payload, adapt_layers=3, engine="qnnpack").embed(rgb, flow)
    assert (folded - unfused).abs().max() <= 0.05 * folded.abs().max()


def test_leantta_on_int8_reads_integers_and_matches_float_leantta(exported):
    bundle, data = exported
    rgb, flow = clips(5, seed=11, shift=0.25)  # a brightness shift to adapt to
    float_lt = load_model(bundle_to_bytes(bundle), "leantta", adapt_layers=2).model
    int8_lt = load_model(data, "leantta", adapt_layers=2, engine="qnnpack").model
    int8_none = load_model(data, "none", engine="qnnpack").model
    seen = []
    for module in int8_lt.modules():
        if isinstance(module, LeanTTANorm):
            module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_quantized))
    with torch.inference_mode():
        z_f, z_q, z_none = (
            float_lt.embed(rgb, flow),
            int8_lt.embed(rgb, flow),
            int8_none.embed(rgb, flow),
        )
        z_float_none = bundle.model.embed(rgb, flow)
    assert len(seen) == 4 and all(seen)  # 2 layers x 2 streams, each saw int8 activations
    tolerance = 0.05 * z_f.abs().max()
    assert (z_q - z_f).abs().max() <= tolerance
    # LeanTTA moved both models the same way, by more than the quantisation noise
    float_shift, int8_shift = z_f - z_float_none, z_q - z_none
    assert float_shift.abs().max() > 0
    assert (
        torch.nn.functional.cosine_similarity(float_shift.flatten(), int8_shift.flatten(), 0) > 0.8
    )


def test_leantta_int8_is_stateless(exported):
    _bundle, data = exported
    model = load_model(data, "leantta", adapt_layers=3, engine="qnnpack").model
    rgb, flow = clips(3, seed=5)
    with torch.inference_mode():
        first = model.embed(rgb[:1], flow[:1])
        model.embed(rgb[1:], flow[1:] * 3)  # a very different sample in between
        again = model.embed(rgb[:1], flow[:1])
        batch = model.embed(rgb, flow)
        singles = torch.cat([model.embed(rgb[i : i + 1], flow[i : i + 1]) for i in range(3)])
    assert torch.equal(first, again)
    assert torch.allclose(batch, singles, atol=1e-5)


def test_artifact_roundtrip_size_and_bad_bytes(exported):
    bundle, data = exported
    payload = int8_payload_from_bytes(data)  # weights_only load
    assert payload["streams"]["rgb"]["blocks"][0]["weight"].dtype == torch.int8
    assert is_int8_artifact(data) and not is_int8_artifact(bundle_to_bytes(bundle))
    with pytest.raises(ValueError, match="not a readable SecDOOD int8 artifact"):
        int8_payload_from_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a SecDOOD int8 artifact"):
        int8_payload_from_bytes(bundle_to_bytes(bundle))
    with pytest.raises(ValueError, match="adapt_layers"):
        build_int8_model(payload, adapt_layers=4)
    with pytest.raises(ValueError, match="engine"):
        build_int8_model(payload, engine="no-such-engine")


def test_no_deprecation_warnings_reach_the_user(exported):
    _bundle, data = exported
    rgb, flow = clips(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(data, "leantta", adapt_layers=1)
        with torch.inference_mode():
            model.model(rgb, flow)
    assert [str(w.message) for w in caught] == []


def test_export_registers_int8_under_the_float_version(registry):
    from server.export import export_latest_int8

    rgb, flow = clips(4)
    record = export_latest_int8(registry, calibration=(rgb, flow))
    float_record = registry.latest_model("secdood_base", "float")
    assert (record.variant, record.version) == ("int8", float_record.version)
    data = registry.artifacts.read_bytes(record.artifact_sha256)
    assert is_int8_artifact(data)
    assert record.size_bytes < float_record.size_bytes  # tiny model: pickle overhead dominates
    with pytest.raises(ValueError, match="already has a 'int8' variant"):
        export_latest_int8(registry, calibration=(rgb, flow))


def test_auto_engine_is_the_fastest_one_measured(exported, monkeypatch):
    from shared.models import int8 as int8_module

    _, data = exported
    payload = int8_payload_from_bytes(data)
    latencies = int8_module.engine_latencies(payload, batch=1, repeats=2)
    available = set(torch.backends.quantized.supported_engines) - {"none"}
    assert set(latencies) == available and all(t > 0 for t in latencies.values())
    # the choice follows the measurement, whatever it is: fake one where qnnpack wins
    fake = {engine: 1.0 for engine in latencies} | {"qnnpack": 0.5}
    monkeypatch.setattr(int8_module, "_measured_engines", {})
    monkeypatch.setattr(int8_module, "engine_latencies", lambda payload, batch=1: fake)
    model = build_int8_model(payload, engine=int8_module.AUTO_ENGINE)
    assert model.engine == "qnnpack" and torch.backends.quantized.engine == "qnnpack"
    fake["qnnpack"] = 2.0  # measured once per model shape: the cached choice stays
    assert int8_module.fastest_engine(payload) == "qnnpack"
