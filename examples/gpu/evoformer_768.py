"""GPU-sized Evoformer (issue 17's GPU run): `examples/evoformer.py` at 768 residues and 64
sequences, about 14 GiB of activations in float32 (estimated). Too large for the CPU benchmark."""

import importlib.util
from pathlib import Path

import torch

_path = Path(__file__).parent.parent / "evoformer.py"
_spec = importlib.util.spec_from_file_location("evoformer_base", _path)
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)
base.N_RES, base.N_SEQ = 768, 64  # read by make_inputs

make_model, make_inputs, dynamic_shapes = base.make_model, base.make_inputs, base.dynamic_shapes
