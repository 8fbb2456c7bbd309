"""Training: TinyML classifiers from the input's shape, and NeuralFP fingerprints of any Keras classifier.

Imports TensorFlow only inside the functions that need it.
"""

from edgefp.trainer.fingerprint import NeuralFingerprint
from edgefp.trainer.train import fingerprint_model, train

__all__ = ["NeuralFingerprint", "fingerprint_model", "train"]
