"""TensorFlow's process-wide settings, made by the subpackages that import TensorFlow (trainer,
converter) before it is first imported: its C++ start-up chatter kept quiet, and its reference CPU
kernels, so that a seed gives the same numbers on every x86 machine. ``import edgefp`` sets nothing."""

import logging
import os


def configure() -> None:
    """Set TensorFlow's environment (where the user has not) and quiet its logger."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
