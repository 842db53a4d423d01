"""The ``idmzoo`` command line: list and describe blocks, validate, build and summarise specs.

Each subcommand is one :class:`Command` in :data:`COMMANDS` (its arguments and the
function that runs it), so a new one is a new entry, not a new branch.  Errors are one
line on stderr and a non-zero status (``--debug`` re-raises them with the traceback);
plugin warnings are one line each on stderr.  torch is imported only by the commands
that build a model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import ValidationError

from .errors import IdmzooError
from .messages import shorten
from .registry import BLOCK_KINDS, BlockInfo, get_block, list_blocks
from .summary import format_table

__all__ = ["Command", "COMMANDS", "EXIT_OK", "EXIT_ERROR", "EXIT_INVALID", "build_parser", "main"]

EXIT_OK = 0
#: Anything that went wrong other than an invalid spec (unreadable file, unknown block...).
EXIT_ERROR = 1
#: The spec is not valid (also argparse's status for bad command-line arguments).
EXIT_INVALID = 2


@dataclass(frozen=True)
class Command:
    """One ``idmzoo`` subcommand.

    Attributes:
        name: what the user types (``list-blocks``).
        help: one line for ``idmzoo --help``.
        add_arguments: declares the subcommand's arguments on its parser.
        run: does the work; returns the exit status.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def validation_lines(err: ValidationError) -> list[str]:
    """One ``<json.path>: <message>`` line per error of ``err``."""
    return [
        shorten(
            f"{'.'.join(str(part) for part in error['loc']) or '<spec>'}: {' '.join(error['msg'].split())}",
            1000,
        )
        for error in err.errors()
    ]


# -- list-blocks ------------------------------------------------------------------------


def _list_blocks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the name (default: *)")
    parser.add_argument("--kind", choices=BLOCK_KINDS, help="only blocks of this kind")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")


def _block_record(info: BlockInfo) -> dict[str, str]:
    return {
        "kind": info.kind,
        "name": info.name,
        "package": info.package,
        "qualified_name": info.qualified_name,
        "description": info.description,
    }


def _list_blocks(args: argparse.Namespace) -> int:
    blocks = list_blocks(args.kind, args.pattern)
    if args.json:
        print(json.dumps([_block_record(info) for info in blocks], indent=2))
    else:
        rows = [[info.kind, info.name, info.package, info.description] for info in blocks]
        print(format_table(["kind", "name", "package", "description"], rows))
    return EXIT_OK


# -- list-models --------------------------------------------------------------------------


def _list_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the name (default: *)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records")


def _list_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .zoo import list_models

    entries = list_models(args.pattern)
    if args.json:
        print(json.dumps([asdict(entry) for entry in entries], indent=2))
    else:
        rows = [[e.name, e.library, e.family, f"{e.param_count:,}", e.description] for e in entries]
        print(format_table(["name", "library", "family", "parameters", "description"], rows))
    return EXIT_OK


# -- download -------------------------------------------------------------------------


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the zoo name (see list-models)")
    parser.add_argument("--checkpoint", metavar="FILE", help="one of its checkpoints (default: the first)")


def _download(args: argparse.Namespace) -> int:
    from .zoo import download_checkpoint

    print(download_checkpoint(args.name, args.checkpoint))
    return EXIT_OK


# -- describe ---------------------------------------------------------------------------


def _describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=BLOCK_KINDS, help="the block kind")
    parser.add_argument("name", help="the block name, or <package>:<name>")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def _describe(args: argparse.Namespace) -> int:
    from .schema import block_parameters

    info = get_block(args.kind, args.name)
    parameters = block_parameters(info)
    factory = f"{info.factory.__module__}.{getattr(info.factory, '__qualname__', info.factory)}"
    if args.json:
        record = {**_block_record(info), "factory": factory, "parameters": [vars(p) for p in parameters]}
        print(json.dumps(record, indent=2))
        return EXIT_OK
    print(
        f'{info.kind} block {info.name!r} from {info.package} (spec: {{"type": "{info.name}"}} '
        f'or "{info.qualified_name}")'
    )
    print(info.description)
    print(f"factory: {factory}")
    print()
    if not parameters:
        print("no parameters")
        return EXIT_OK
    rows = [
        [p.name, p.type, "(required)" if p.default is None else p.default, p.description] for p in parameters
    ]
    print(format_table(["parameter", "type", "default", "description"], rows))
    return EXIT_OK


# -- validate -----------------------------------------------------------------------------


def _spec_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.json", help="the spec file, or a zoo model name")


def load_spec_or_zoo(value: str) -> Any:
    """The spec a command-line argument names: a spec file, JSON text, or a zoo model name."""
    from .spec import load_spec
    from .zoo import list_models, zoo_spec

    if os.path.exists(value) or value.lstrip().startswith("{") or value.endswith(".json"):
        return load_spec(value)
    names = [entry.name for entry in list_models()]
    if value in names:
        return zoo_spec(value)
    from .messages import did_you_mean

    raise IdmzooError(
        f"{value!r} is neither a spec file nor a zoo model.{did_you_mean(value, names)} "
        "(`idmzoo list-models` lists the zoo)"
    )


def _validate(args: argparse.Namespace) -> int:
    try:
        load_spec_or_zoo(args.spec)
    except ValidationError as err:
        print("\n".join(validation_lines(err)))
        return EXIT_INVALID
    print("OK")
    return EXIT_OK


# -- build --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """An argparse type: a positive integer, with the bad value in a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {shorten(text)!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {value}")
    return value


def _device(text: str) -> str:
    """An argparse type: a device torch can parse and this machine has (imports torch, only for ``build``)."""
    from .builder import check_device

    try:
        check_device(text)
    except IdmzooError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    _spec_argument(parser)
    parser.add_argument(
        "--device",
        default="cpu",
        type=_device,
        help='where to allocate the weights; "meta" allocates none (default: cpu)',
    )
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        help="input side length: numeric shapes and each stage's forward FLOPs per image, counted "
        "on the meta device (default: the spec's image_size, shapes only)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _build(args: argparse.Namespace) -> int:
    from .builder import build
    from .summary import summarize

    start = time.perf_counter()
    model = build(load_spec_or_zoo(args.spec), device=args.device)
    seconds = time.perf_counter() - start
    summary = summarize(model, image_size=args.image_size)
    if args.json:
        print(json.dumps({"spec": args.spec, "device": args.device, **summary.to_dict()}, indent=2))
    else:
        print(f"built {args.spec} on {args.device} in {seconds:.2f} s")
        print(summary)
    return EXIT_OK


# -- convert and identify -------------------------------------------------------------------


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT.pt", help="a reference-format checkpoint (a state dict)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", metavar="SPEC.json", help="the spec it fits (a file or a zoo model name)")
    source.add_argument("--model", metavar="ZOO_NAME", help="the zoo model it fits (see list-models)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the file to write")
    parser.add_argument("--key", help="the entry holding the state dict, when the checkpoint nests several")


def _convert(args: argparse.Namespace) -> int:
    from .artifacts import save
    from .checkpoint import load_checkpoint
    from .errors import CheckpointError
    from .zoo import zoo_spec

    spec = zoo_spec(args.model) if args.model else load_spec_or_zoo(args.spec)
    try:
        model = load_checkpoint(spec, args.checkpoint, key=args.key)  # strict
    except CheckpointError as err:  # the mismatch report is a list: keep its lines
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    path = save(model, args.output)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {count:,} parameters; load it with idmzoo.load({str(path)!r})")
    return EXIT_OK


def _identify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a .pt or .safetensors file")
    parser.add_argument(
        "--closest", type=int, default=3, metavar="N", help="closest entries shown (default 3)"
    )


def _identify(args: argparse.Namespace) -> int:
    from .identification import identify

    found = identify(args.checkpoint)
    print(f"{args.checkpoint}: {len(found.shapes)} tensors")
    if found.exact:
        print(f"fits exactly: {', '.join(found.exact)}")
        print(f"convert it: idmzoo convert {args.checkpoint} --model {found.exact[0]} -o OUT.safetensors")
        return EXIT_OK
    print("no exact zoo match; closest:")
    for match in found.matches[: args.closest]:
        print(
            f"  {match.name}: {match.names:.0%} of tensor names and {match.fit:.0%} of shapes in common; "
            f"differs: {match.differences()}"
        )
    rebuilt = found.reconstruction
    if rebuilt.spec is None:
        print(f"no spec reconstructed: {rebuilt.reason}")
        return EXIT_OK
    print("spec reconstructed from the shapes (it loads this checkpoint strictly):")
    print(rebuilt.spec.to_json())
    print("not determined by the shapes:")
    for item in rebuilt.undetermined:
        print(f"  {item}")
    return EXIT_OK


# -- schema -------------------------------------------------------------------------------


def _schema(args: argparse.Namespace) -> int:
    from .schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(
        "list-blocks",
        "list the registered blocks of every installed distribution",
        _list_blocks_arguments,
        _list_blocks,
    ),
    Command(
        "list-models",
        "list the zoo: the published configurations with their parameter counts",
        _list_models_arguments,
        _list_models,
    ),
    Command(
        "download",
        "download a zoo model's published checkpoint into the cache and print its path",
        _download_arguments,
        _download,
    ),
    Command(
        "describe",
        "show a block's parameters with their types, defaults and docs",
        _describe_arguments,
        _describe,
    ),
    Command(
        "validate",
        "check a spec file: prints OK, or one <json.path>: <message> line per error",
        _spec_argument,
        _validate,
    ),
    Command("build", "build a spec and print a per-stage summary", _build_arguments, _build),
    Command(
        "convert",
        "turn a reference .pt checkpoint into a self-describing .safetensors file (idmzoo.load reads it)",
        _convert_arguments,
        _convert,
    ),
    Command(
        "identify",
        "which zoo models a checkpoint's tensor shapes fit, or the closest and a spec read off them",
        _identify_arguments,
        _identify,
    ),
    Command(
        "schema",
        "print the JSON Schema of spec files, with every installed block's parameters",
        lambda parser: None,
        _schema,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser of ``idmzoo``, one subparser per command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="idmzoo", description="List and describe blocks; validate, build and summarise specs."
    )
    parser.add_argument("--version", action="version", version=f"idmzoo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    # Also accepted after the subcommand; SUPPRESS keeps it from resetting the value above.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.help, parents=[debug]
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _one_line_warning(stream: TextIO) -> Callable[..., None]:
    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"warning: {' '.join(str(message).split())}", file=stream)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``idmzoo`` with ``argv`` (default: the process arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(sys.stderr)
        try:
            return args.run(args)
        except BrokenPipeError:  # the reader went away (`idmzoo schema | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
        except Exception as err:  # every failure is one line, unless --debug asks for more
            if args.debug:
                raise
            if isinstance(err, ValidationError):
                print("\n".join(f"error: {line}" for line in validation_lines(err)), file=sys.stderr)
                return EXIT_INVALID
            message = str(err) if isinstance(err, IdmzooError) else f"{type(err).__name__}: {err}"
            print(f"error: {' '.join(message.split())} (--debug shows the traceback)", file=sys.stderr)
            return EXIT_ERROR
