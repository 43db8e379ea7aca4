"""The quantization spec (spherequant.models.gaq.QuantizationSpec): validated once, round-trips through the
YAML section and the checkpoint entry, travels unchanged config -> quantize_ -> checkpoint -> loader, reads
the entries older checkpoints hold; and the deprecated names keep working with a warning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from _helpers import calibration_molecules, small_model
from spherequant.models import checkpoints, gaq, md_cli, train
from spherequant.models.baselines import BASELINE_OPTIONS, BASELINES
from spherequant.models.gaq import InferenceOptions, QATSchedule, QuantizationSpec, StorageFormat

# one spec per method, with non-default values wherever the method allows them
SPECS = {
    "gaq": QuantizationSpec.from_options(
        "gaq", codebook="icosahedral", codebook_size=642, magnitude_bits=6, magnitude="log", tau=2.5,
        lee_weight=0.3, warmup_epochs=4, direction_ste="plain", force_mode="smooth", quantize_embedding=False,
        weight_bits_equivariant=3, seed=7,
    ),
    "naive_int8": QuantizationSpec.from_options("naive_int8", activation_bits=8),
    "svq_kmeans": QuantizationSpec.from_options("svq_kmeans", codebook_size=32, magnitude_bits=5, seed=2),
    "degree_quant": QuantizationSpec.from_options("degree_quant", p_min=0.05, p_max=0.2, percentile=99.0),
    "lsq": QuantizationSpec.from_options("lsq", weight_bits_invariant=6, activation_bits=6),
    "qdrop": QuantizationSpec.from_options("qdrop", p=0.25, quantize_embedding=False),
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(SPECS))
def test_spec_round_trips_through_the_yaml_section(method):
    spec = SPECS[method]
    section = spec.to_dict()
    assert QuantizationSpec.from_dict(section) == spec
    text = yaml.safe_dump({"quantization": section})
    assert QuantizationSpec.from_dict(yaml.safe_load(text)["quantization"]) == spec
    # the YAML options are exactly the keys the method takes, and carry the values given
    assert set(section["options"]) == set(QuantizationSpec.from_options(method).flat_options())
    if method == "gaq":
        assert section["options"]["codebook_size"] == 642 and section["options"]["lee_weight"] == 0.3


@pytest.mark.parametrize("method", sorted(SPECS))
def test_spec_round_trips_through_the_checkpoint_entry(method):
    spec = SPECS[method]
    entry = spec.to_checkpoint()
    assert QuantizationSpec.from_checkpoint(entry) == spec
    assert set(entry["config"]) == set(gaq.GAQ_OPTION_KEYS)  # the flat form older loaders read
    assert hash(spec) == hash(QuantizationSpec.from_checkpoint(entry))


def test_spec_is_frozen_and_its_parts_are_separate():
    spec = SPECS["gaq"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "lsq"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.format.codebook_size = 12
    assert isinstance(spec.format, StorageFormat) and spec.format.codebook_size == 642
    assert isinstance(spec.schedule, QATSchedule) and spec.schedule.warmup_epochs == 4
    assert isinstance(spec.inference, InferenceOptions) and spec.inference.force_mode == "smooth"
    assert {f.name for f in dataclasses.fields(StorageFormat)}.isdisjoint(
        {f.name for f in dataclasses.fields(QATSchedule)}
    )


def test_baseline_options_default_and_are_public():
    assert set(BASELINE_OPTIONS) == set(BASELINES)
    for method in BASELINES:
        spec = QuantizationSpec.from_options(method)
        assert spec.method_options == BASELINE_OPTIONS[method], method
        # a baseline never switches the attention, has no LEE term and no warm-up
        assert (spec.format.attention, spec.schedule.lee_weight, spec.schedule.warmup_epochs) == (
            "keep",
            0,
            0,
        )
    svq = QuantizationSpec.from_options("svq_kmeans")
    assert (svq.format.codebook, svq.format.codebook_size, svq.schedule.direction_ste) == (
        "kmeans",
        256,
        "none",
    )


@pytest.mark.parametrize(
    ("make", "exc", "field"),
    [
        (lambda: StorageFormat(weight_bits_equivariant=9), ValueError, "weight_bits_equivariant"),
        (lambda: StorageFormat(codebook_size=2.5), TypeError, "codebook_size"),
        (lambda: StorageFormat(codebook="learned", codebook_size=3), ValueError, "codebook_size"),
        (lambda: StorageFormat(quantize_embedding="yes"), TypeError, "quantize_embedding"),
        (lambda: QATSchedule(warmup_epochs=-1), ValueError, "warmup_epochs"),
        (lambda: QATSchedule(lee_weight=float("inf")), ValueError, "lee_weight"),
        (lambda: QATSchedule(calibration_batches=0), ValueError, "calibration_batches"),
        (lambda: InferenceOptions(force_mode="exact"), ValueError, "force_mode"),
        (lambda: QuantizationSpec(method="int4"), ValueError, "method"),
        (lambda: QuantizationSpec(format={"codebook_size": 4}), TypeError, "format"),
        (lambda: QuantizationSpec.from_options("gaq", codebok=4), ValueError, "codebok"),
        (lambda: QuantizationSpec.from_options("qdrop", p=-0.1), ValueError, "p must"),
        (lambda: QuantizationSpec.from_options("degree_quant", p_min=0.5, p_max=0.1), ValueError, "p_min"),
        (lambda: QuantizationSpec.from_options("degree_quant", percentile=0.0), ValueError, "percentile"),
        (lambda: QuantizationSpec.from_options("lsq", lee_weight=0.1), ValueError, "lee_weight"),
        (lambda: QuantizationSpec(method="lsq", options={"p": 0.5}), ValueError, "unknown options"),
        (lambda: QuantizationSpec(method="lsq"), ValueError, "attention"),  # GAQ's cosine switch
        (lambda: QuantizationSpec(options=5), TypeError, "options"),
        (lambda: QuantizationSpec.from_dict({"method": "gaq", "bits": 4}), ValueError, "bits"),
        (lambda: QuantizationSpec.from_dict({"method": "gaq", "options": [1]}), TypeError, "options"),
        (lambda: QuantizationSpec.from_checkpoint({"method": "gaq", "config": {"x": 1}}), ValueError, "x"),
    ],
)
def test_validation_errors_name_the_field(make, exc, field):
    with pytest.raises(exc, match=field):
        make()


def test_spec_travels_unchanged_from_quantize_to_the_loader(tmp_path):
    """quantize_ attaches the very spec object; the checkpoint entry rebuilds an equal one; converting and
    switching the force mode change the model's state, never its spec."""
    spec = QuantizationSpec.from_options("gaq", codebook_size=64, warmup_epochs=2, lee_weight=0.25)
    model = small_model(torch.float64)
    gaq.quantize_(model, spec)
    gaq.calibrate_(model, calibration_molecules(torch.float64))
    assert gaq.quantization_spec(model) is spec
    gaq.set_force_mode(model, "smooth")
    assert gaq.quantization_state(model).force_mode == "smooth" and gaq.quantization_spec(model) is spec
    path = tmp_path / "q.pt"
    entry = checkpoints.quantization_entry(model)
    assert (
        entry["force_mode"] == "smooth" and entry["step"] == "prepared" and entry["calibration_batches"] == 16
    )
    torch.save({"model_config": model.config, "model_state": model.state_dict(), "quantization": entry}, path)
    loaded = checkpoints.load_model(path)
    assert gaq.quantization_spec(loaded) == spec
    assert gaq.quantization_state(loaded).force_mode == "smooth"
    gaq.quantize_(loaded, spec, step="convert")
    assert gaq.quantization_state(loaded).step == "converted" and gaq.quantization_spec(loaded) == spec


def test_train_config_builds_the_spec_once():
    section = {"method": "qdrop", "init_checkpoint": "x.pt", "calibration_batches": 2, "options": {"p": 0.3}}
    cfg = train.TrainConfig.from_dict({"epochs": 1, "quantization": section})
    spec = cfg.quantization_spec
    assert spec is cfg.quantization_spec  # built by validate, not per access
    assert spec == QuantizationSpec.from_dict({k: v for k, v in section.items() if k != "init_checkpoint"})
    assert spec.schedule.calibration_batches == 2 and spec.method_options == {"p": 0.3}
    assert train.TrainConfig.from_dict({"epochs": 1}).quantization_spec is None
    # the run record keeps the section as written (resume compares it with the one in last.pt)
    assert cfg.to_dict()["quantization"] == {**section, "options": {"p": 0.3}}


def test_entries_of_older_checkpoints_load():
    """Before the spec, a baseline's entry held GAQ defaults (cosine attention, LEE 0.1, warm-up 10) in
    ``config`` that the baseline never applied, and no ``calibration_batches``."""
    old = {
        "method": "degree_quant",
        "config": dataclasses.asdict(gaq.QuantizationSpec().format)
        | {"lee_weight": 0.1, "warmup_epochs": 10, "direction_ste": "geometric", "force_mode": "ste"},
        "options": {"p_min": 0.0, "p_max": 0.1, "percentile": 99.9},
        "step": "prepared",
        "enabled": {"equivariant": True, "invariant": True},
        "force_mode": "ste",
    }
    spec = QuantizationSpec.from_checkpoint(old)
    assert spec == QuantizationSpec.from_options("degree_quant")
    model = small_model(torch.float64)
    checkpoints.apply_quantization(model, old)
    assert type(model.layers[0].x_quant).__name__ == "DegreeQuantActivation"
    shipped = checkpoints.read_checkpoint("azobenzene-gfn2-gaq-w4a8-small")["quantization"]  # an older entry
    assert "calibration_batches" not in shipped
    assert QuantizationSpec.from_checkpoint(shipped).format.codebook_size == 4096


def test_deprecated_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="GAQConfig"):
        cfg = gaq.GAQConfig(codebook_size=64, warmup_epochs=2)
    assert cfg.to_spec() == QuantizationSpec.from_options("gaq", codebook_size=64, warmup_epochs=2)
    assert cfg.bits_per_vector == 8 + 6 and cfg.weight_bits("equivariant") == 4
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="codebook_size"):
        gaq.GAQConfig(codebook="icosahedral", codebook_size=100)
    model = small_model(torch.float64)
    gaq.quantize_(model, cfg)  # accepted and converted
    assert gaq.quantization_spec(model) == cfg.to_spec()
    with pytest.warns(DeprecationWarning, match="quantization_entry"):
        entry = checkpoints.quantization_spec(model)
    assert entry == checkpoints.quantization_entry(model)
    with pytest.warns(DeprecationWarning, match="load_md_model"):
        assert (
            type(md_cli.load_model("morse", [1, 1], [[0.0, 0, 0], [0.74, 0, 0]])).__name__
            == "MorseLJPotential"
        )
    with pytest.warns(DeprecationWarning, match="error_metrics"):
        assert train.evaluate is not train.error_metrics and callable(train.evaluate)
        train.evaluate(small_model(torch.float64), _tiny_dataset(), [0], batch_size=1)


def _tiny_dataset():
    import numpy as np
    from spherequant.models.data import MolecularDataset

    pos = np.array([[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]])
    return MolecularDataset([8, 1, 1], pos, [-1.0], np.zeros((1, 3, 3)))
