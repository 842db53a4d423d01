"""Specs from the reference libraries: their constructor arguments, and their command lines.

- :mod:`.classes`: ``spec_from_reference`` of a model class's keyword arguments.
- :mod:`.flag_defaults`: the flags each reference script accepts, with their defaults.
- :mod:`.argv`: parsing a command line as the reference's argparse set-up does.
- :mod:`.create`: the reference's ``create_*`` functions, from parsed flags to kwargs.
- :mod:`.flags`: the pipeline, ``reference_kwargs_from_flags`` and ``spec_from_flags``.
"""

from .argv import str2bool
from .classes import REFERENCE_CLASSES, spec_from_reference
from .flag_defaults import KINDS, LIBRARIES
from .flags import reference_flag_defaults, reference_kwargs_from_flags, spec_from_flags

__all__ = [
    "KINDS",
    "LIBRARIES",
    "REFERENCE_CLASSES",
    "reference_flag_defaults",
    "reference_kwargs_from_flags",
    "spec_from_flags",
    "spec_from_reference",
    "str2bool",
]
