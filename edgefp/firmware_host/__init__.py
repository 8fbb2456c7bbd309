"""Everything that talks to or runs on a device; imports without TensorFlow."""
