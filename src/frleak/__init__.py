"""frleak: measure what a face recognition model leaks about its training data.

Implements arXiv 2401.13719 ("Inference Attacks Against Face Recognition Model without Classification Layers"):
membership inference from BatchNorm statistics (stage 1), GAN model inversion guided by it (stage 2), and defenses,
with the modern membership-inference conventions (members are the positive class, exact ROC, TPR at low FPR).
"""

from frleak.errors import FrleakError

__version__ = "0.1.0"
__all__ = ["FrleakError", "__version__"]
