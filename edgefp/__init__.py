"""edgefp: fingerprint TinyML classifiers, deploy them int8, and flag what they have never seen."""

import logging
import os

__version__ = "0.1.0"

# TensorFlow is imported lazily by the trainer and converter: keep its C++ start-up chatter quiet,
# and use its reference CPU kernels so that a seed gives the same numbers on every x86 machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
logging.getLogger("tensorflow").setLevel(logging.ERROR)
