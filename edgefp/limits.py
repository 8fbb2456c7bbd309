"""Caps that both sides of the kit share (docs/security.md): what a device does for one request, what a
bundle may hold, how long a shared key must be. Plain numbers, importable without numpy."""

MAX_INVOKES = 100_000  # runs + warm-ups of one benchmark; a device refuses more with OVER_LIMIT
BENCH_MAX_SECONDS = 5  # a device stops a BENCH still running after this long with OVER_LIMIT
MIN_KEY_BYTES = 16  # shared keys shorter than this are refused
MAX_MANIFEST_BYTES = 4 << 20  # a bundle's manifest.json (16 layers of score tables take about 150 KB)
MAX_FILES_BYTES = 256 << 20  # the other files of a bundle (the model), together
