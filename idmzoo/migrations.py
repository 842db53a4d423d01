"""Saved specs keep loading: ``spec_version`` and the steps that bring an older spec up to date.

Every spec idmzoo writes (``Spec.save``, ``Spec.to_json``, the metadata of a saved model)
carries ``"spec_version": SPEC_VERSION``.  A spec without it is version 1, the format of
idmzoo 0.1 and of hand-written files.  Reading a spec applies :data:`MIGRATIONS` one
version at a time until it is current; a version newer than this idmzoo knows is refused,
never guessed at.  Stdlib only: :mod:`idmzoo.spec` runs this before any field is validated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import SpecVersionError

__all__ = ["SPEC_VERSION", "MIGRATIONS", "migrate_spec"]

#: The version of the spec format this idmzoo writes.  Version 2 added ``spec_version``
#: itself; its fields are those of version 1.
SPEC_VERSION = 2

#: ``MIGRATIONS[v]`` turns the fields of a version-``v`` spec into those of version ``v + 1``.
#: A change to the format adds a step here and raises :data:`SPEC_VERSION`.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: lambda fields: fields,  # version 2 only starts writing spec_version
}


def migrate_spec(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` (a saved spec of any known version) as a current spec, without ``spec_version``.

    Raises:
        SpecVersionError: ``spec_version`` is not a positive integer, or is newer than
            :data:`SPEC_VERSION` (the message says to upgrade idmzoo).
    """
    fields = dict(data)
    version = fields.pop("spec_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecVersionError(f"spec_version must be a positive integer, but got {version!r}")
    if version > SPEC_VERSION:
        raise SpecVersionError(
            f"this spec has spec_version {version}, written by a newer idmzoo; this idmzoo reads "
            f"spec versions up to {SPEC_VERSION}: pip install --upgrade idmzoo"
        )
    for step in range(version, SPEC_VERSION):
        fields = MIGRATIONS[step](fields)
    return fields
