"""ASE calculator: forces against finite differences, units, checkpoint loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces
from spherequant.models.calculator import SphereQuantCalculator, available_pretrained
from spherequant.models.so3krates import So3krates

SMALL = dict(num_features=16, num_layers=2, num_heads=2, degrees=(1, 2), num_rbf=8, max_z=10, cutoff=4.0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = So3krates(**SMALL).double()
    m.set_energy_statistics({1: -13.6, 6: -1000.0, 8: -2000.0}, 0.5)
    return m


@pytest.fixture
def water_methanol():
    pos = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.96, 0.0, 0.0],
            [-0.24, 0.93, 0.0],
            [2.5, 0.3, 0.4],
            [3.3, -0.4, 0.1],
            [2.8, 1.2, -0.3],
        ]
    )
    return Atoms("OHHCHH", positions=pos)


def test_forces_match_numerical_forces(model, water_methanol):
    atoms = water_methanol
    atoms.calc = SphereQuantCalculator(model)
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 2, 3, 5])
    forces = forces[[0, 2, 3, 5]]
    err = np.abs(forces - numeric)
    assert err.max() < 1e-6, f"max |F - F_num| {err.max():.3e} at {np.unravel_index(err.argmax(), err.shape)}"
    assert np.abs(forces).max() > 1e-3
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)


def test_results_equal_model_and_units(model, water_methanol):
    atoms = water_methanol
    z = torch.as_tensor(atoms.numbers)
    ref = model(z, torch.as_tensor(atoms.positions))
    atoms.calc = SphereQuantCalculator(model)
    assert abs(atoms.get_potential_energy() - ref["energy"].item()) < 1e-12
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"].detach().numpy(), atol=1e-12)
    # a model working in kcal/mol and nm: the calculator converts to eV and Angstrom
    atoms_nm = water_methanol.copy()
    atoms_nm.calc = SphereQuantCalculator(model, energy_units_to_eV=0.0433641, length_units_to_A=10.0)
    ref_nm = model(z, torch.as_tensor(atoms.positions / 10.0))
    assert abs(atoms_nm.get_potential_energy() - 0.0433641 * ref_nm["energy"].item()) < 1e-12
    np.testing.assert_allclose(
        atoms_nm.get_forces(), ref_nm["forces"].detach().numpy() * 0.0433641 / 10.0, atol=1e-12
    )


def test_float32_calculator(model, water_methanol):
    atoms = water_methanol
    atoms.calc = SphereQuantCalculator(So3krates(**SMALL), dtype=torch.float32)
    assert atoms.calc.model.embedding.weight.dtype == torch.float32
    assert np.isfinite(atoms.get_forces()).all()


def test_from_checkpoint_uses_ema_weights(model, water_methanol, tmp_path):
    ema = So3krates(**SMALL).double()
    ema.load_state_dict(model.state_dict())
    with torch.no_grad():
        ema.energy_mlp[-1].bias.add_(1.0)  # a different "EMA" model
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model_config": model.config, "model_state": model.state_dict(), "ema_state": ema.state_dict()}, path
    )
    a1, a2 = water_methanol.copy(), water_methanol.copy()
    a1.calc = SphereQuantCalculator.from_checkpoint(path)
    a2.calc = SphereQuantCalculator.from_checkpoint(path, use_ema=False)
    z, pos = torch.as_tensor(a1.numbers), torch.as_tensor(a1.positions)
    assert abs(a1.get_potential_energy() - ema.eval()(z, pos)["energy"].item()) < 1e-12
    assert abs(a2.get_potential_energy() - model.eval()(z, pos)["energy"].item()) < 1e-12


def test_errors(model, water_methanol, tmp_path):
    with pytest.raises(ValueError, match="available"):
        SphereQuantCalculator.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SphereQuantCalculator.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="model"):
        SphereQuantCalculator("not a model")
    with pytest.raises(ValueError, match="length_units_to_A"):
        SphereQuantCalculator(model, length_units_to_A=0.0)
    periodic = water_methanol.copy()
    periodic.set_cell([10, 10, 10])
    periodic.pbc = True
    periodic.calc = SphereQuantCalculator(model)
    with pytest.raises(NotImplementedError, match="molecules"):
        periodic.get_potential_energy()


@pytest.mark.skipif(
    "azobenzene-gfn2-fp32" not in available_pretrained(), reason="shipped model not trained yet"
)
def test_pretrained_loads():
    calc = SphereQuantCalculator.from_pretrained("azobenzene-gfn2-fp32")
    assert calc.model.config["num_features"] > 0


def test_quantized_checkpoint_smooth_forces_match_numerical_forces(model, water_methanol, tmp_path):
    """A GAQ-prepared checkpoint through the single loader: force_mode="smooth" forces are conservative
    (finite differences of the reported energy); "ste" (straight-through surrogate) forces differ."""
    from spherequant.models import gaq
    from spherequant.models.checkpoints import quantization_entry

    cfg = gaq.QuantizationSpec.from_options("gaq", codebook_size=64)
    z = torch.as_tensor(water_methanol.numbers)
    pos = torch.as_tensor(water_methanol.positions)
    gaq.quantize_(model, cfg)
    gaq.calibrate_(model, [{"z": z, "pos": pos + 0.05 * torch.randn(pos.shape, dtype=pos.dtype)}])
    path = tmp_path / "gaq.pt"
    spec = quantization_entry(model)
    torch.save({"model_config": model.config, "model_state": model.state_dict(), "quantization": spec}, path)
    atoms = water_methanol
    atoms.calc = SphereQuantCalculator.from_checkpoint(path, force_mode="smooth")
    forces = atoms.get_forces()[[0, 2, 3, 5]]
    numeric = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 2, 3, 5])
    err = np.abs(forces - numeric)
    where = np.unravel_index(err.argmax(), err.shape)
    assert err.max() < 1e-6, f"smooth: max |F - F_num| {err.max():.3e} at {where}"
    atoms.calc = SphereQuantCalculator.from_checkpoint(path, force_mode="ste")
    assert gaq.quantization_state(atoms.calc.model).force_mode == "ste"
    gap = np.abs(atoms.get_forces()[[0, 2, 3, 5]] - numeric).max()
    assert gap > 1e-6, f"ste forces equal the smooth ones ({gap:.3e}): the mode switch did nothing"
    with pytest.raises(ValueError, match="force_mode"):
        SphereQuantCalculator.from_checkpoint(path, force_mode="exact")
