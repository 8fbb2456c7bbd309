"""Conversion of RUN directories into deployable int8 TFLite bundles (imports TensorFlow lazily, with its
settings made first: :mod:`edgefp.tfenv`)."""

from edgefp import tfenv

tfenv.configure()
