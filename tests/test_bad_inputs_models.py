"""Bad-input table of the models layer's public entry points (issue 13).

Rows: entry point x {zero, NaN, inf, huge, tiny, wrong shape, wrong dtype (float16, bfloat16, complex, int,
bool), empty, duplicates, unknown names, corrupt and malicious files, bad devices}, where the input applies.
Every row asserts the exception type and that the message names the offending argument (or file), so a user
can act on it; none may return NaN or a silently wrong answer. Malicious files prove that no code runs: the
same file does run its payload under ``torch.load(weights_only=False)`` (the control), and does not under
the project's loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import METHANOL_POS, METHANOL_Z, Payload, bad_input_model, noisy_dataset
from ase import Atoms
from spherequant.models import checkpoints, data, md_cli
from spherequant.models.calculator import SphereQuantCalculator
from spherequant.models.evaluation import evaluate_checkpoint, force_lee, naive_int8_ptq
from spherequant.models.so3krates import model_from_checkpoint

Z, BASE = METHANOL_Z, METHANOL_POS  # the frame of the good files of the ``files`` fixture (conftest.py)

HAS_CUDA = torch.cuda.is_available()


def _npz(tmp_path, name="x.npz", **overrides) -> Path:
    arrays = {
        "nuclear_charges": Z,
        "coords": BASE[None].repeat(2, 0),
        "energies": np.zeros(2),
        "forces": np.zeros((2, 6, 3)),
    }
    arrays.update(overrides)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------------ malicious files
def test_malicious_payload_is_real_but_never_runs(files):
    """Control: the payload does create its marker under ``weights_only=False``; the project's loaders never
    run it and say why."""
    d = files["dir"]
    control = d / "control"
    control.mkdir(exist_ok=True)
    torch.save({"x": Payload(control / "MARKER")}, control / "evil.pt")
    torch.load(control / "evil.pt", weights_only=False)
    assert (control / "MARKER").exists(), "control: the payload must run under weights_only=False"
    for key in ("malicious_pt", "malicious_pickle"):
        path = files[key]
        loaders = (
            lambda p: checkpoints.read_checkpoint(p),
            lambda p: checkpoints.load_model(p),
            lambda p: model_from_checkpoint(p),
            lambda p: SphereQuantCalculator.from_checkpoint(p),
            lambda p: md_cli.load_md_model(str(p)),
            lambda p: evaluate_checkpoint(p, lee_frames=1, n_rotations=1),
        )
        for load in loaders:
            with pytest.raises(ValueError, match=r"cannot be loaded safely.*refused") as info:
                load(path)
            assert path.name in str(info.value)
    assert not (d / "MARKER_torch").exists() and not (d / "MARKER_pickle").exists()


def test_npz_with_pickled_member_is_refused(files):
    with pytest.raises(ValueError, match=r"provenance.*pickled"):
        data.load_npz(files["pickled_npz"])
    assert not (files["dir"] / "MARKER_npz").exists()


# ------------------------------------------------------------------------------------------ checkpoint files
CKPT_LOADERS = {
    "read_checkpoint": lambda p: checkpoints.read_checkpoint(p),
    "load_model": lambda p: checkpoints.load_model(p),
    "model_from_checkpoint": lambda p: model_from_checkpoint(p),
    "calculator": lambda p: SphereQuantCalculator.from_checkpoint(p),
    "md_cli.load_md_model": lambda p: md_cli.load_md_model(str(p)),
    "evaluate_checkpoint": lambda p: evaluate_checkpoint(p, lee_frames=1, n_rotations=1),
}
CKPT_FILES = [
    ("empty_pt", "empty file"),
    ("garbage_pt", "cannot be loaded safely|not a readable"),
    ("truncated_pt", "not a readable PyTorch checkpoint"),
    ("list_pt", "holds a list, not a checkpoint dict"),
    ("nan_pt", "non-finite"),
    ("inf_pt", "non-finite"),
]


@pytest.mark.parametrize("loader", list(CKPT_LOADERS))
@pytest.mark.parametrize(("key", "word"), CKPT_FILES)
def test_bad_checkpoint_files(files, loader, key, word):
    with pytest.raises(ValueError, match=word) as info:
        CKPT_LOADERS[loader](files[key])
    assert files[key].name in str(info.value), str(info.value)
    assert "\n" not in str(info.value), "one-line message expected"


@pytest.mark.parametrize(
    ("key", "word"),
    [
        ("mismatch_pt", "does not match its model_config"),
        ("nokey_pt", "no 'model_state' entry"),
        ("half_pt", "float32 or float64"),
    ],
)
def test_inconsistent_checkpoints(files, key, word):
    with pytest.raises(ValueError, match=word) as info:
        checkpoints.load_model(files[key])
    assert files[key].name in str(info.value)


def test_nonfinite_checkpoint_loads_when_asked(files):
    model = checkpoints.load_model(files["nan_pt"], allow_nonfinite=True)
    w = model.embedding.weight
    assert bool(torch.isnan(w[0]).all()) and bool(torch.isfinite(w[1:]).all())
    with pytest.raises(ValueError, match="non-finite"):
        checkpoints.load_model(torch.load(files["nan_pt"], weights_only=True))  # a loaded dict is checked too


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": "cuda:99"} if HAS_CUDA else {"device": "cuda"}, ValueError, "device"),
        ({"device": 3}, TypeError, "device"),
        ({"device": ""}, ValueError, "device"),
        ({"dtype": torch.float16}, ValueError, "dtype"),
        ({"dtype": torch.bfloat16}, ValueError, "dtype"),
        ({"dtype": torch.complex64}, ValueError, "dtype"),
        ({"dtype": torch.int64}, ValueError, "dtype"),
        ({"force_mode": "smooth"}, ValueError, "force_mode"),
        ({"force_mode": "bogus"}, ValueError, "force_mode"),
        ({"allow_nonfinite": "yes"}, TypeError, "allow_nonfinite"),
    ],
)
def test_load_model_arguments(files, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        checkpoints.load_model(files["good_pt"], **kwargs)


@pytest.mark.parametrize(
    ("spec", "exc", "word"),
    [
        ("no-such-model", FileNotFoundError, "no-such-model.*pretrained"),
        ("", FileNotFoundError, "checkpoint"),
        (3.5, TypeError, "checkpoint"),
        (None, TypeError, "checkpoint"),
    ],
)
def test_unknown_checkpoint_names(spec, exc, word):
    with pytest.raises(exc, match=word):
        checkpoints.load_model(spec)


# ------------------------------------------------------------------------------------------ trained elements
def test_shipped_model_refuses_untrained_elements():
    """The issue's repro: the azobenzene model (H, C, N) must not return energies for Xe2 or aspirin (O)."""
    from ase.build import molecule

    for name in checkpoints.available_pretrained():
        model = checkpoints.load_model(name)
        assert model.trained_elements == (1, 6, 7), name
        xe2 = torch.tensor([54, 54]), torch.tensor([[0.0, 0, 0], [0, 0, 4.4]], dtype=model.dtype)
        with pytest.raises(ValueError, match=r"Xe \(Z=54\).*not trained on.*H \(Z=1\), C \(Z=6\), N \(Z=7\)"):
            model(*xe2)
        aspirin = Atoms("C9H8O4", positions=np.random.default_rng(0).normal(size=(21, 3)) * 2.0)
        aspirin.calc = SphereQuantCalculator(model)
        with pytest.raises(ValueError, match=r"O \(Z=8\).*not trained on"):
            aspirin.get_potential_energy()
        benzene = molecule("C6H6")  # trained elements only: accepted, finite
        benzene.calc = SphereQuantCalculator(model)
        assert np.isfinite(benzene.get_potential_energy())
        with pytest.raises(ValueError, match=r"O \(Z=8\)"):
            md_cli.load_md_model(name, z=[8, 1, 1], positions=BASE[:3])


def test_trained_elements_sources(files):
    raw = torch.load(files["good_pt"], weights_only=True)
    assert checkpoints.trained_elements(raw) == (1, 6, 8)  # normalisation shifts
    assert checkpoints.trained_elements({**raw, "trained_elements": [8, 1]}) == (1, 8)  # recorded entry wins
    no_norm = {k: v for k, v in raw.items() if k != "normalisation"}
    assert checkpoints.trained_elements(no_norm) == (1, 6, 8)  # from the training data set named
    bare = {"model_config": raw["model_config"], "model_state": raw["model_state"]}
    assert checkpoints.trained_elements(bare) is None  # unknown: no check
    with pytest.raises(ValueError, match="trained_elements"):
        checkpoints.trained_elements({"trained_elements": [0, 1]})
    with pytest.raises(ValueError, match="trained_elements"):
        checkpoints.trained_elements({"trained_elements": ["H"]})
    with pytest.raises(TypeError, match="ckpt"):
        checkpoints.trained_elements([1, 2])
    model = checkpoints.load_model({**raw, "trained_elements": [1, 6]})
    with pytest.raises(ValueError, match=r"O \(Z=8\)"):
        model(torch.tensor(Z), torch.tensor(BASE))


# ------------------------------------------------------------------------------------------ data files
@pytest.mark.parametrize("reader", [data.load_npz, data.load_rmd17])
@pytest.mark.parametrize(
    ("key", "word"),
    [
        ("crc_npz", "'coords' is corrupt or truncated"),
        ("truncated_npz", "not a readable .npz|corrupt"),
        ("garbage_npz", "not a readable .npz"),
        ("empty_npz", "not a readable .npz"),
        ("zero_npz", "zero frames"),
        ("npy_as_npz", "not an .npz archive"),
    ],
)
def test_bad_data_files(files, reader, key, word):
    with pytest.raises(ValueError, match=word) as info:
        reader(files[key])
    assert files[key].name in str(info.value)


@pytest.mark.parametrize(
    ("override", "word"),
    [
        ({"coords": BASE[None].repeat(2, 0).astype(np.float16)}, "'coords' has dtype float16"),
        ({"forces": np.zeros((2, 6, 3), np.complex128)}, "'forces' must be real"),
        ({"energies": np.array([True, False])}, "'energies' must be real"),
        ({"energies": np.array(["a", "b"])}, "'energies' must be real"),
        ({"nuclear_charges": Z.astype(np.complex64)}, "'nuclear_charges' must be integers"),
        ({"nuclear_charges": Z + 0.5}, "nuclear_charges"),
        ({"nuclear_charges": np.array([0, 8, 1, 1, 1, 1])}, "nuclear_charges"),
        ({"nuclear_charges": np.array([6, 8, 1, 1, 1, 200])}, "nuclear_charges"),
        (
            {
                "nuclear_charges": np.zeros(0, np.int64),
                "coords": np.zeros((2, 0, 3)),
                "forces": np.zeros((2, 0, 3)),
            },
            "nuclear_charges' is empty",
        ),
        ({"coords": np.full((2, 6, 3), np.nan)}, "'coords' contains 36 NaN"),
        ({"energies": np.array([np.inf, 0.0])}, "'energies' contains 1 NaN/inf"),
        ({"forces": np.full((2, 6, 3), np.inf)}, "'forces' contains 36 NaN/inf"),
        ({"coords": np.zeros((2, 5, 3))}, "'coords' must have shape"),
        ({"energies": np.zeros(3)}, "'energies' must have shape"),
        ({"forces": np.zeros((2, 6, 2))}, "'forces' must have shape"),
        ({"provenance": np.array("{not json")}, "provenance"),
        ({"provenance": np.array("[1, 2]")}, "provenance"),
    ],
)
def test_bad_data_arrays(tmp_path, override, word):
    path = _npz(tmp_path, **override)
    with pytest.raises(ValueError, match=word) as info:
        data.load_npz(path)
    assert path.name in str(info.value)


def test_data_extremes_are_kept_exactly(tmp_path):
    """Huge and tiny but finite values and integer coordinates load unchanged (no error, no rescaling)."""
    coords = np.array([BASE * 1e300, BASE * 1e-300])
    path = _npz(tmp_path, coords=coords, energies=np.array([1e300, -1e-300]), forces=np.zeros((2, 6, 3)))
    ds = data.load_npz(path)
    np.testing.assert_array_equal(ds.positions.reshape(2, 6, 3), coords)
    ints = data.load_npz(_npz(tmp_path, "ints.npz", coords=np.ones((2, 6, 3), np.int32)))
    assert ints.positions.dtype == np.float64 and np.all(ints.positions == 1.0)


@pytest.mark.parametrize(
    ("key", "word"),
    [("empty_xyz", "empty"), ("malformed_xyz", "could not be read"), ("text_xyz", "could not be read")],
)
def test_bad_ase_files(files, key, word):
    with pytest.raises(ValueError, match=word) as info:
        data.read_ase(files[key])
    assert files[key].name in str(info.value)


def test_missing_and_unknown_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.npz"):
        data.load_npz(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match=r"nope.xyz"):
        data.read_ase(tmp_path / "nope.xyz")
    with pytest.raises(ValueError, match="is not a file"):
        data.read_ase(tmp_path)
    with pytest.raises(ValueError, match="unknown data set name 'no-such-set'"):
        data.load_dataset("no-such-set")
    with pytest.raises(TypeError, match="name must be a str"):
        data.load_dataset(3)


POS = BASE[None].repeat(2, 0)
FRC = np.zeros((2, 6, 3))


@pytest.mark.parametrize(
    ("args", "exc", "word"),
    [
        ((Z, POS.astype(np.float16), [0.0, 1], FRC), ValueError, "positions has dtype float16"),
        ((Z, torch.tensor(POS).bfloat16(), [0.0, 1], FRC), ValueError, "positions has dtype torch.bfloat16"),
        ((Z, POS, [0.0, 1], FRC.astype(np.complex64)), ValueError, "forces must be real"),
        ((Z, POS, np.array([1j, 0]), FRC), ValueError, "energies must be real"),
        ((Z, POS, [True, False], FRC), ValueError, "energies must be real"),
        ((Z, [POS[0], POS[1].astype(np.float16)], [0.0, 1], FRC), ValueError, "positions of frame 1"),
        ((Z, POS, [np.nan, 1], FRC), ValueError, "energies contain NaN"),
        ((Z, POS + np.inf, [0.0, 1], FRC), ValueError, "positions contain NaN"),
        ((Z, POS, [0.0, 1], FRC * np.nan), ValueError, "forces contain NaN"),
        ((Z, POS[:, :5], [0.0, 1], FRC), ValueError, "positions of frame 0"),
        ((Z, POS, [0.0, 1, 2], FRC), ValueError, "positions has 2 frames but energies has 3"),
        ((Z, POS, np.zeros((2, 2)), FRC), ValueError, "energies must have shape"),
        ((Z * 100, POS, [0.0, 1], FRC), ValueError, "numbers must be atomic numbers"),
        ((Z + 0.5, POS, [0.0, 1], FRC), ValueError, "numbers must be integers"),
        ((Z, "abc", [0.0, 1], FRC), ValueError, "positions"),
        ((Z, 3.0, [0.0, 1], FRC), TypeError, "positions"),
    ],
)
def test_dataset_constructor(args, exc, word):
    with pytest.raises(exc, match=word):
        data.MolecularDataset(*args)


def test_batching_and_split_arguments(tmp_path):
    ds = noisy_dataset()
    for dtype in (torch.float16, torch.bfloat16, torch.complex64, torch.int64):
        with pytest.raises(ValueError, match="dtype"):
            data.collate(ds, dtype=dtype)
    with pytest.raises(TypeError, match="indices must be integers"):
        data.collate(ds, [0.5, 1.0])
    with pytest.raises(IndexError, match="indices out of range"):
        data.collate(ds, [0, 99])
    with pytest.raises(ValueError, match="indices must be 1-D"):
        data.collate(ds, [[0, 1]])
    for bs in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            data.iterate_batches(ds, batch_size=bs)
    for kw, word in (({"n_train": -1}, "n_train"), ({"n_val": 1.5}, "n_val"), ({"n_train": 99}, "exceeds")):
        with pytest.raises(ValueError, match=word):
            data.split(ds, **({"n_train": 4, "n_val": 2} | kw))
    with pytest.raises(ValueError, match="fmt"):
        data.split(ds, 4, 2, fmt="csv")
    # duplicated indices across the saved index files are refused
    idx = tmp_path / "split"
    idx.mkdir()
    for part, arr in (("train", [0, 1, 2]), ("val", [2, 3]), ("test", [4])):
        np.save(idx / f"{part}.npy", np.array(arr))
    with pytest.raises(ValueError, match="overlap"):
        data.split(ds, 3, 2, index_dir=idx)
    with pytest.raises(ValueError, match="at least one frame"):
        data.energy_statistics(ds, indices=[])


# ------------------------------------------------------------------------------------------ calculator
@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": "cuda:99"} if HAS_CUDA else {"device": "cuda"}, ValueError, "device"),
        ({"device": None}, TypeError, "device"),
        ({"dtype": torch.float16}, ValueError, "dtype"),
        ({"dtype": torch.bfloat16}, ValueError, "dtype"),
        ({"dtype": torch.complex128}, ValueError, "dtype"),
        ({"dtype": torch.int32}, ValueError, "dtype"),
        ({"dtype": "float64"}, ValueError, "dtype"),
        ({"energy_units_to_eV": 0.0}, ValueError, "energy_units_to_eV"),
        ({"energy_units_to_eV": float("nan")}, ValueError, "energy_units_to_eV"),
        ({"energy_units_to_eV": float("inf")}, ValueError, "energy_units_to_eV"),
        ({"energy_units_to_eV": -1.0}, ValueError, "energy_units_to_eV"),
        ({"energy_units_to_eV": True}, TypeError, "energy_units_to_eV"),
        ({"length_units_to_A": 0}, ValueError, "length_units_to_A"),
        ({"length_units_to_A": 1j}, TypeError, "length_units_to_A"),
        ({"length_units_to_A": "1"}, TypeError, "length_units_to_A"),
    ],
)
def test_calculator_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        SphereQuantCalculator(bad_input_model(), **kwargs)


def test_calculator_inputs(files):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        SphereQuantCalculator("azobenzene-gfn2-fp32")
    with pytest.raises(TypeError, match="path"):
        SphereQuantCalculator.from_checkpoint(3)
    with pytest.raises(FileNotFoundError, match=r"missing.pt"):
        SphereQuantCalculator.from_checkpoint(files["dir"] / "missing.pt")
    with pytest.raises(ValueError, match="no pretrained model named 'nope'"):
        SphereQuantCalculator.from_pretrained("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        SphereQuantCalculator.from_pretrained(None)
    calc = SphereQuantCalculator.from_checkpoint(files["good_pt"])  # trained on H, C, O
    cases = [
        (Atoms("CHHN", positions=BASE[:4]), ValueError, r"N \(Z=7\).*not trained on"),
        (Atoms("Xe2", positions=[[0, 0, 0], [0, 0, 4.4]]), ValueError, "z must hold atomic numbers|Xe"),
        (Atoms("COH", positions=[[0, 0, 0], [np.nan, 0, 0], [1, 1, 0]]), ValueError, "positions contain NaN"),
        (Atoms("COH", positions=[[0, 0, 0], [np.inf, 0, 0], [1, 1, 0]]), ValueError, "positions contain NaN"),
        (Atoms("COH", positions=[[0, 0, 0], [0, 0, 0], [1, 1, 0]]), ValueError, "share a position"),
        (Atoms(), ValueError, "at least one atom"),
        (
            Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], pbc=True, cell=np.eye(3) * 5),
            NotImplementedError,
            "pbc",
        ),
    ]
    for atoms, exc, word in cases:
        atoms.calc = calc
        with pytest.raises(exc, match=word):
            atoms.get_potential_energy()
    # huge / tiny (finite) scales: far atoms do not interact (isolated-atom energies), no NaN
    far = Atoms("CO", positions=[[0, 0, 0], [1e300, 0, 0]])
    far.calc = calc
    assert far.get_potential_energy() == pytest.approx(-3000.0, abs=1e-9)
    near = Atoms("CO", positions=[[0, 0, 0], [1e-300, 0, 0]])
    near.calc = calc
    try:  # either a finite answer or the coincident-atoms error (the edge length may underflow to 0)
        finite = np.isfinite(near.get_potential_energy()) and np.all(np.isfinite(near.get_forces()))
    except ValueError as err:
        assert "share a position" in str(err)
    else:
        assert finite


# ------------------------------------------------------------------------------------------ md API
def test_md_api_inputs(files):
    with pytest.raises(TypeError, match="model must be a str"):
        md_cli.load_md_model(Path(files["good_pt"]))
    with pytest.raises(ValueError, match="'nope' is neither a checkpoint file nor a pretrained name"):
        md_cli.load_md_model("nope")
    model = md_cli.load_md_model(str(files["good_pt"]))
    with pytest.raises(ValueError, match=r"N \(Z=7\)"):
        md_cli.load_md_model(str(files["good_pt"]), z=[7, 1], positions=BASE[:2])
    with pytest.raises(ValueError, match="frame 99 out of range"):
        md_cli._load_frame(str(files["good_npz"]), 99)
    with pytest.raises(ValueError, match="zero frames"):
        md_cli._load_frame(str(files["zero_npz"]), 0)
    with pytest.raises(ValueError, match="coords' is corrupt"):
        md_cli._load_frame(str(files["crc_npz"]), 0)
    with pytest.raises(ValueError, match="unknown data set name"):
        md_cli._load_frame("no-such-set", 0)
    from spherequant.models.md import run_md

    with pytest.raises(ValueError, match=r"N \(Z=7\).*not trained on"):
        run_md(model, [6, 7, 1], BASE[:3], n_steps=2, device="cpu")


# ------------------------------------------------------------------------------------------ evaluation API
@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"max_test_frames": 0}, ValueError, "max_test_frames"),
        ({"max_test_frames": -3}, ValueError, "max_test_frames"),
        ({"max_test_frames": 1.5}, TypeError, "max_test_frames"),
        ({"max_test_frames": True}, TypeError, "max_test_frames"),
        ({"lee_frames": 0}, ValueError, "lee_frames"),
        ({"lee_frames": float("nan")}, TypeError, "lee_frames"),
        ({"n_rotations": 0}, ValueError, "n_rotations"),
        ({"n_rotations": float("inf")}, TypeError, "n_rotations"),
        ({"seed": -1}, ValueError, "seed"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": "cuda:99"} if HAS_CUDA else {"device": "cuda"}, ValueError, "device"),
        ({"force_mode": "bogus"}, ValueError, "force_mode"),
    ],
)
def test_evaluation_arguments(files, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        evaluate_checkpoint(files["good_pt"], **kwargs)


def test_evaluation_inputs(files, tmp_path):
    with pytest.raises(ValueError, match="calibration_frames"):
        naive_int8_ptq(files["good_pt"], calibration_frames=0)
    no_cfg = torch.load(files["good_pt"], weights_only=True)
    no_cfg.pop("train_config")
    torch.save(no_cfg, tmp_path / "nocfg.pt")
    with pytest.raises(ValueError, match=r"nocfg.pt.*no training configuration"):
        evaluate_checkpoint(tmp_path / "nocfg.pt")
    model, ds = checkpoints.load_model(files["good_pt"]), noisy_dataset()
    cases = [
        ({"indices": []}, ValueError, "indices must be a non-empty"),
        ({"indices": [[0, 1]]}, ValueError, "indices must be a non-empty 1-D"),
        ({"indices": [0.0, 1.0]}, TypeError, "indices must be integers"),
        ({"indices": [0, 12]}, IndexError, "indices out of range"),
        ({"indices": [-1]}, IndexError, "indices out of range"),
        ({"indices": [0], "n_rotations": 0}, ValueError, "n_rotations"),
        ({"indices": [0], "batch_size": 0}, ValueError, "batch_size"),
        ({"indices": [0], "seed": -2}, ValueError, "seed"),
    ]
    for kw, exc, word in cases:
        with pytest.raises(exc, match=word):
            force_lee(model, ds, **kw)
    with pytest.raises(TypeError, match="dataset must be a MolecularDataset"):
        force_lee(model, ds.positions, [0])
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        force_lee("model", ds, [0])
    # duplicated frames are legitimate (each rotated and counted): the LEE of a float64 model stays tiny
    res = force_lee(model, ds, [0, 0], n_rotations=2)
    assert res["lee_frames"] == 2 and res["lee_max"] < 1e-6, res


def test_device_resolution():
    assert checkpoints.resolve_device("cpu") == torch.device("cpu")
    assert checkpoints.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x", "", "cpu cpu"):
        with pytest.raises(ValueError, match="--device"):
            checkpoints.resolve_device(bad, "--device")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            checkpoints.resolve_device("cuda")


def test_shipped_checkpoints_load_safely_and_give_identical_numbers():
    """The shipped files load with weights_only=True and give the same energies and forces as the old
    weights_only=False path (the unpickled objects are the same)."""
    from ase.build import molecule

    atoms = molecule("C6H6")
    for name in checkpoints.available_pretrained():
        path = checkpoints.resolve_checkpoint(name)
        old = checkpoints.load_model(torch.load(path, map_location="cpu", weights_only=False))
        new = checkpoints.load_model(name)
        z = torch.as_tensor(atoms.numbers)
        pos = torch.as_tensor(atoms.positions, dtype=new.dtype)
        a, b = old(z, pos), new(z, pos)
        assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"]), name
    assert os.path.isdir(checkpoints.PRETRAINED_DIR)


def test_training_checkpoint_numpy_state_is_allowed_other_objects_are_not(files, tmp_path):
    """Training checkpoints hold ``np.random.get_state()`` (NumPy arrays: allow-listed, restored exactly);
    any other NumPy object, e.g. a pickled ``Generator`` (built by calling a constructor), is refused."""
    raw = torch.load(files["good_pt"], weights_only=True)
    state = np.random.RandomState(7).get_state()
    torch.save({**raw, "rng": {"numpy": state, "python": (3, (1, 2), None)}}, tmp_path / "train.pt")
    back = checkpoints.read_checkpoint(tmp_path / "train.pt")["rng"]["numpy"]
    assert back[0] == state[0] and np.array_equal(back[1], state[1]) and back[1].dtype == state[1].dtype
    assert back[2:] == state[2:]
    torch.save({**raw, "rng": np.random.default_rng(0)}, tmp_path / "generator.pt")
    with pytest.raises(ValueError, match=r"generator.pt.*cannot be loaded safely.*numpy"):
        checkpoints.read_checkpoint(tmp_path / "generator.pt")
    torch.save({**raw, "fn": np.save}, tmp_path / "function.pt")
    with pytest.raises(ValueError, match=r"function.pt.*cannot be loaded safely"):
        checkpoints.load_model(tmp_path / "function.pt")
