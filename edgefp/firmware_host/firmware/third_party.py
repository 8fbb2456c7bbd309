"""Others' C sources in the firmware (``c/third_party/``): Monocypher 4.0.3 and LibTomCrypt's SHA-512, which
verify bundle signatures (docs/security.md). Each file is a copy of one in a source distribution on PyPI,
pinned in ``c/third_party/pins.json`` by the distribution's SHA-256 and the file's own. Every build checks
the copies against their hashes (:func:`check`); ``python -m edgefp.firmware_host.firmware.third_party``
downloads the distributions with pip and checks that the copies are theirs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgefp.errors import EdgefpError

DIR = Path(__file__).with_name("c") / "third_party"
PINS = DIR / "pins.json"


def pins() -> dict:
    return json.loads(PINS.read_text())


def check() -> None:
    """Refuse (EdgefpError) to build with a third-party file that is not the one pinned."""
    for name, pin in pins().items():
        for file, entry in pin["files"].items():
            path = DIR / name / file
            content = path.read_bytes() if path.is_file() else b""
            if hashlib.sha256(content).hexdigest() != entry["sha256"]:
                raise EdgefpError(
                    f"{path} is not the file pinned in {PINS.name} ({entry['from']} of {pin['sdist']}); "
                    "restore it from the source distribution"
                )


def verify_against_pypi(download_dir: str) -> list[str]:
    """Download each pinned source distribution with pip into ``download_dir``; check its SHA-256 and that
    every copied file is the distribution's. The lines of a report."""
    lines = []
    for name, pin in pins().items():
        sdist = Path(download_dir) / pin["sdist"]
        if not sdist.exists():
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            command += ["--no-binary", pin["package"], f"{pin['package']}=={pin['version']}", "-d", download_dir]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0 or not sdist.exists():
                reason = (result.stderr.strip().splitlines() or ["no file"])[-1]
                raise EdgefpError(f"cannot download {pin['sdist']} from PyPI with pip: {reason}")
        if hashlib.sha256(sdist.read_bytes()).hexdigest() != pin["sdist_sha256"]:
            raise EdgefpError(f"{pin['sdist']} from PyPI does not have the pinned SHA-256; do not build with it")
        with tarfile.open(sdist) as archive:
            for file, entry in pin["files"].items():
                member = archive.extractfile(entry["from"])
                if member is None or member.read() != (DIR / name / file).read_bytes():
                    raise EdgefpError(f"third_party/{name}/{file} is not {entry['from']} of {pin['sdist']}")
        lines.append(f"{name}: {len(pin['files'])} files are those of {pin['sdist']} (sha256 {pin['sdist_sha256']})")
    return lines


def main() -> int:
    check()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            print("\n".join(verify_against_pypi(scratch)))
        except EdgefpError as exc:
            print(f"edgefp: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
