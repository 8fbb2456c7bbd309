"""Training: TinyML classifiers from the input's shape, and NeuralFP fingerprints of any Keras classifier.

Imports TensorFlow only inside the functions that need it, with its settings made first (:mod:`edgefp.tfenv`).
"""

from edgefp import tfenv

tfenv.configure()

from edgefp.trainer.fingerprint import NeuralFingerprint  # noqa: E402 - after TensorFlow's settings
from edgefp.trainer.train import fingerprint_model, train  # noqa: E402

__all__ = ["NeuralFingerprint", "fingerprint_model", "train"]
