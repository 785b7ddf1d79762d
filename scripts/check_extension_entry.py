"""Check the Extensions Index entry (Resources/ExtensionsIndex/DeepRegistration.json) before it is submitted.

    python scripts/check_extension_entry.py [ENTRY.json]

1. It validates against the catalog entry schema v1.0.1 (the copy of its rules in Resources/ExtensionsIndex; with
   ``jsonschema``, which the test extra installs).
2. It agrees with the top-level CMakeLists.txt: the schema URL names v1.0.1, ``category`` is EXTENSION_CATEGORY,
   ``build_dependencies`` is EXTENSION_DEPENDS, ``scm_url`` is EXTENSION_HOMEPAGE (+ ``.git``), and the icon and
   screenshot URLs point at files of this repository (a 128x128 PNG icon).
Prints each problem and exits 1 when there is one; 0 and "ok" otherwise.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "Resources" / "ExtensionsIndex" / "catalog-entry-schema-v1.0.1.json"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json"


def cmake_settings(path: Path = ROOT / "CMakeLists.txt") -> dict[str, str]:
    """``set(EXTENSION_* "...")`` values of the extension's CMakeLists.txt."""
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', path.read_text()))


def problems(entry_path: Path) -> list[str]:
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"{entry_path}: cannot read JSON: {err}"]
    found = []
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for error in sorted(validator.iter_errors(entry), key=lambda e: list(e.path)):
        where = "/".join(map(str, error.path)) or "(entry)"
        found.append(f"schema: {where}: {error.message}")
    if not isinstance(entry, dict):
        return found
    if entry.get("$schema", "").rstrip("#") != SCHEMA_URL:
        found.append(f"$schema must be {SCHEMA_URL}#")
    cmake = cmake_settings()
    if entry.get("category") != cmake.get("EXTENSION_CATEGORY"):
        found.append(f"category {entry.get('category')!r} differs from EXTENSION_CATEGORY {cmake.get('EXTENSION_CATEGORY')!r}")
    depends = [d for d in cmake.get("EXTENSION_DEPENDS", "").replace(";", " ").split() if d != "NA"]
    if sorted(entry.get("build_dependencies", [])) != sorted(depends):
        found.append(f"build_dependencies {entry.get('build_dependencies')} differ from EXTENSION_DEPENDS {depends}")
    if str(entry.get("scm_url", "")).removesuffix(".git") != cmake.get("EXTENSION_HOMEPAGE"):
        found.append(f"scm_url {entry.get('scm_url')!r} is not the EXTENSION_HOMEPAGE {cmake.get('EXTENSION_HOMEPAGE')!r}")
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in cmake.get(key, "").split():
            local = ROOT / url.split("/main/", 1)[-1]
            if "/main/" not in url or not local.is_file():
                found.append(f"{key} {url} does not point at a file of this repository")
            elif key == "EXTENSION_ICONURL":
                header = local.read_bytes()[:24]
                size = struct.unpack(">II", header[16:24]) if header[:8] == b"\x89PNG\r\n\x1a\n" else None
                if size != (128, 128):
                    found.append(f"the icon {local.name} must be a 128x128 PNG (is {size})")
    return found


def main(argv: list[str]) -> int:
    entry = Path(argv[0]) if argv else ROOT / "Resources" / "ExtensionsIndex" / "DeepRegistration.json"
    found = problems(entry)
    for problem in found:
        print(f"{entry.name}: {problem}")
    if not found:
        print(f"{entry.name}: ok (catalog entry schema v1.0.1, consistent with CMakeLists.txt)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
