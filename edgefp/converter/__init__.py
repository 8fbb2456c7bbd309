"""Conversion of RUN directories into deployable int8 TFLite bundles (imports TensorFlow lazily)."""
