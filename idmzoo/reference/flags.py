"""From a published command line to reference constructor kwargs, and to a spec.

``reference_kwargs_from_flags`` emulates a reference script's pipeline,
``add_dict_to_argparser`` → argparse → ``create_*``, and returns exactly the keyword
arguments the reference passes to its model class; ``spec_from_flags`` turns those into
a :class:`~idmzoo.Spec`.

Flag sets (one per library and kind; anything outside the set is an error):

* ``("improved-diffusion", "model")`` - ``model_and_diffusion_defaults()`` → ``create_model`` → ``UNetModel``.
* ``("improved-diffusion", "sr")`` - ``sr_model_and_diffusion_defaults()`` → ``sr_create_model`` → ``SuperResModel``.
* ``("guided-diffusion", "model")`` - ``model_and_diffusion_defaults()`` → ``create_model`` → ``UNetModel``.
* ``("guided-diffusion", "sr")`` - ``sr_model_and_diffusion_defaults()`` → ``sr_create_model`` → ``SuperResModel``.
* ``("guided-diffusion", "classifier")`` - ``classifier_and_diffusion_defaults()`` →
  ``create_classifier`` → ``EncoderUNetModel``.
* ``("consistency-models", "model")`` - ``model_and_diffusion_defaults()`` → ``create_model``
  → ``UNetModel`` (guided-diffusion's ``create_model``: the same tables and kwargs; only the
  defaults differ, and its attention ignores ``use_new_attention_order``).

``learn_sigma`` is listed among the diffusion defaults in ADM, yet it doubles
``out_channels`` of the U-Nets (the classifier ignores it). ``small_size`` is accepted by
the super-resolution flag sets but ignored by ``sr_create_model`` in both libraries.

Example:
    >>> reference_kwargs_from_flags(
    ...     "improved-diffusion", "--image_size 32 --learn_sigma True --dropout 0.3"
    ... )[1]["channel_mult"]
    [1, 2, 2, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FlagError
from ..messages import did_you_mean
from ..spec import Spec
from .argv import parse_flags
from .classes import spec_from_reference
from .create import CREATE_FUNCTIONS
from .flag_defaults import DEFAULTS, KINDS, LIBRARIES

__all__ = ["reference_flag_defaults", "reference_kwargs_from_flags", "spec_from_flags"]


def _check_library_kind(library: object, kind: object) -> tuple[str, str]:
    if library not in LIBRARIES:
        raise FlagError(
            f"unknown library {library!r}.{did_you_mean(str(library), LIBRARIES, n=1)} Valid libraries: "
            + ", ".join(repr(lib) for lib in LIBRARIES)
        )
    if kind not in KINDS:
        raise FlagError(
            f"unknown kind {kind!r}.{did_you_mean(str(kind), KINDS, n=1)} Valid kinds: "
            "'model' (create_model -> UNetModel), 'sr' (sr_create_model -> SuperResModel), "
            "'classifier' (create_classifier -> EncoderUNetModel, guided-diffusion only)"
        )
    if (library, kind) not in DEFAULTS:
        valid = ", ".join(repr(k) for lib, k in DEFAULTS if lib == library)
        raise FlagError(
            f"{library} has no {kind} (create_classifier exists only in guided-diffusion, "
            f"sr_create_model not in consistency-models); valid kinds for {library}: {valid}"
        )
    return library, kind  # type: ignore[return-value]


def reference_flag_defaults(library: str, kind: str = "model") -> dict[str, object]:
    """Return the reference defaults dict that defines the legal flags.

    This is the dict the reference scripts pass to ``add_dict_to_argparser``
    (minus the script-only training/sampling flags), in the reference order.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        kind: ``"model"``, ``"sr"`` or ``"classifier"`` (guided-diffusion only).

    Returns:
        A fresh ``{flag name: default value}`` dict.

    Raises:
        FlagError: If ``library`` or ``kind`` is unknown, or the combination
            does not exist.
    """
    library, kind = _check_library_kind(library, kind)
    return dict(DEFAULTS[(library, kind)])


def reference_kwargs_from_flags(
    library: str,
    flags: str | Sequence[str] | Mapping[str, object],
    kind: str = "model",
) -> tuple[str, dict]:
    """Return (class_name, constructor_kwargs).

    Emulates the reference pipeline ``add_dict_to_argparser`` -> argparse ->
    ``create_model`` / ``sr_create_model`` / ``create_classifier`` and returns
    exactly the keyword arguments that function passes to the model class.
    Flags not given take the reference defaults. ``channel_mult`` and
    ``attention_resolutions`` are returned as lists (the reference builds
    tuples); ``attention_resolutions`` holds downsample rates
    ``image_size // resolution`` in the order the flag lists the resolutions.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        flags: The flags, as one string (``shlex``-split, e.g.
            ``"--image_size 64 --learn_sigma True"``), a sequence of argv
            tokens, or a mapping ``{flag name: value}`` (names with or without
            the leading ``--``; values either strings parsed like the command
            line or Python values of the flag's type). Both ``--flag value``
            and ``--flag=value`` are accepted; a repeated flag keeps its last
            value, as with argparse.
        kind: ``"model"`` (``UNetModel``), ``"sr"`` (``SuperResModel``) or
            ``"classifier"`` (``EncoderUNetModel``, guided-diffusion only).

    Returns:
        ``(class_name, kwargs)`` where ``class_name`` is ``"UNetModel"``,
        ``"SuperResModel"`` or ``"EncoderUNetModel"``.

    Raises:
        FlagError: For an unknown library/kind, a classifier requested from
            improved-diffusion, an unknown flag (with suggestions and the list
            of valid flags), a value that does not parse as the flag's type,
            or an image size the reference ``create_*`` function rejects.
        TypeError: If ``flags`` is not a string, sequence or mapping.
    """
    library, kind = _check_library_kind(library, kind)
    args = parse_flags(library, kind, flags)
    return CREATE_FUNCTIONS[(library, kind)](args)


def spec_from_flags(
    library: str, flags: str | Sequence[str] | Mapping[str, Any], kind: str = "model"
) -> Spec:
    """The spec of a published command line, with the library's defaults for flags not given.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        flags: ``"--image_size 64 --num_channels 128 ..."``, argv tokens, or a mapping.
        kind: ``"model"``, ``"sr"`` (super-resolution) or ``"classifier"``.

    Raises:
        FlagError: an unknown flag or an impossible value (named in the message).

    Examples:
        >>> spec_from_flags("improved-diffusion", "--image_size 32 --num_channels 128 "
        ...                 "--num_res_blocks 3 --learn_sigma True --dropout 0.3")
    """
    model, kwargs = reference_kwargs_from_flags(library, flags, kind)
    return spec_from_reference(library, model, kwargs)
