"""Per-module sensitivity to a quantization recipe, and mixed recipes made from it.

``measure_sensitivity`` quantizes one group of the denoiser's linear layers at a time with the
recipe's own backend (the real quantized layer, swapped in) while the rest stays at the reference
precision, runs the denoiser on inputs captured from reference generations, and records the
error of its output (``context="uniform"``: every group quantized, and the error removed by
promoting each one alone, see ``incontext.py``). ``mix_recipe`` turns the ranking into an
ordinary recipe that keeps the most sensitive groups precise within a byte budget.
"""

from diffquant.sensitivity.groups import GRANULARITIES, Group, make_groups
from diffquant.sensitivity.mix import MixChoice, mix_recipe
from diffquant.sensitivity.run import CONTEXTS, GroupResult, SensitivityResult, measure_sensitivity

__all__ = ["CONTEXTS", "GRANULARITIES", "Group", "GroupResult", "MixChoice", "SensitivityResult", "make_groups",
           "measure_sensitivity", "mix_recipe"]
