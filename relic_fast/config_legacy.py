"""Reading configs written for older versions: values spelled the old way, keys that no longer exist.

`relic_fast.config.config_from_dict` passes every section through `migrate_spellings` before it is
validated, so an old recipe or a checkpoint's saved config still loads, with a warning for the former.
"""

from __future__ import annotations

import warnings
from typing import Any

LEGACY_SPELLINGS: dict[tuple[str, str], dict[str, str]] = {
    ("train", "device"): {"cuda": "gpu"},
    ("data", "device"): {"cuda": "gpu"},
    ("optim", "implementation"): {"native": "reference"},
}
"""Values older configs (and the configs saved in older checkpoints) spell differently: each concept now has
one spelling in TOML, on the CLI and in code ("gpu", "reference")."""


REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("data", "output_dtype"): "views always leave DALI as uint8 pixels and are normalized on the trainer's "
                              "device (relic_fast.step.prepare_views)",
}
"""Keys older configs (and checkpoints) have that no longer exist, with why: read and ignored."""


def migrate_spellings(section: str, values: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """`values` of `section` with legacy spellings replaced by today's and removed keys dropped (saying so
    when `warn`)."""
    migrated = dict(values)
    for key, value in values.items():
        if (section, key) in REMOVED_KEYS:
            del migrated[key]
            if warn:
                warnings.warn(f"{source}: {section}.{key} is ignored: {REMOVED_KEYS[section, key]}", stacklevel=4)
            continue
        new = LEGACY_SPELLINGS.get((section, key), {}).get(value) if isinstance(value, str) else None
        if new is not None:
            migrated[key] = new
            if warn:
                warnings.warn(f"{source}: {section}.{key} = {value!r} is spelled {new!r} now (read as {new!r})",
                              stacklevel=4)
    return migrated
