"""Physical constants and unit conversions of the models layer, each defined once.

Internal units: positions in Angstrom, energies in eV, forces in eV/Angstrom, time in fs, masses in amu,
temperatures in K. The SI constants are exact since the 2019 redefinition except the atomic mass constant
(CODATA 2018); the derived conversions are computed from them, not typed in.

Examples
--------
>>> round(KCAL_PER_MOL, 9)         # 1 kcal/mol in eV (1 eV = 23.0605 kcal/mol)
0.043364104
>>> round(EV_PER_AMU_A2_FS2, 4)    # kinetic energy of 1 amu at 1 Angstrom/fs, in eV
103.6427
"""

from __future__ import annotations

__all__ = [
    "AMU_KG",
    "AVOGADRO",
    "ELEMENTARY_CHARGE_C",
    "EV_PER_AMU_A2_FS2",
    "KB_EV_PER_K",
    "KB_J_PER_K",
    "KCAL_PER_MOL",
]

#: Elementary charge (C), exact since the 2019 SI.
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Avogadro constant (1/mol), exact since the 2019 SI.
AVOGADRO = 6.02214076e23
#: Boltzmann constant (J/K), exact since the 2019 SI.
KB_J_PER_K = 1.380649e-23
#: Atomic mass constant (kg), CODATA 2018.
AMU_KG = 1.66053906660e-27

#: 1 kcal/mol in eV: 4184 J/mol over (e N_A) J/mol per eV = 0.0433641043... eV (exact thermochemical value;
#: rMD17 stores energies in kcal/mol and forces in kcal/mol/Angstrom).
KCAL_PER_MOL = 4184.0 / (ELEMENTARY_CHARGE_C * AVOGADRO)
#: Energy of 1 amu moving at 1 Angstrom/fs, in eV: amu * (1e-10 m / 1e-15 s)**2 / e ~= 103.6427.
EV_PER_AMU_A2_FS2 = AMU_KG * (1e-10 / 1e-15) ** 2 / ELEMENTARY_CHARGE_C
#: Boltzmann constant in eV/K (~8.617333e-5).
KB_EV_PER_K = KB_J_PER_K / ELEMENTARY_CHARGE_C
