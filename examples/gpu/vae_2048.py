"""GPU-sized VAE decode (issue 17's GPU run): `examples/vae.py` turning a 256x256 latent into a
2048-px image, about 3 GiB of activations in float32 (estimated). Too large for the CPU benchmark.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("vae_base", Path(__file__).parent.parent / "vae.py")
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)
base.LATENT = 256  # read by make_inputs

make_model, make_inputs, dynamic_shapes = base.make_model, base.make_inputs, base.dynamic_shapes
