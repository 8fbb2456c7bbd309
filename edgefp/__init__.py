"""edgefp: fingerprint TinyML classifiers, deploy them int8, and flag what they have never seen."""

__version__ = "0.1.0"
