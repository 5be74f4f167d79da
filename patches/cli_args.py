"""``vllm serve ... --executor esp --esp-instances N``: the ESP flags of the vLLM CLI.

``EngineArgs.add_cli_args`` is wrapped to add an "ESP" argument group; since
``EngineArgs.from_cli_args`` keeps only dataclass fields, it is wrapped too and folds the
ESP flags into fields vLLM already has (``distributed_executor_backend``, ``scheduler_cls``,
``additional_config``, ``tensor_parallel_size``) through :func:`vllm_esp.options.apply`.
The plugin loads before vLLM builds the ``serve`` parser, so the flags show in ``--help``.
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch


def _install(engine_args_cls) -> None:
    from vllm_esp import options

    original_add = engine_args_cls.add_cli_args
    original_from = engine_args_cls.from_cli_args.__func__

    def add_cli_args(parser, *args, **kwargs):
        parser = original_add(parser, *args, **kwargs)
        if options.add_argument_group(parser):
            _validate_after_parsing(parser)
        return parser

    def from_cli_args(cls, args):
        updates = options.apply_from_namespace(args)
        for key, value in updates.items():
            setattr(args, key, value)
        return original_from(cls, args)

    add_cli_args.__wrapped__ = original_add
    engine_args_cls.add_cli_args = staticmethod(add_cli_args)
    engine_args_cls.from_cli_args = classmethod(from_cli_args)


def _validate_after_parsing(parser) -> None:
    """Report bad ESP options (flags or ``--additional-config '{"esp": ...}'``) as an argparse
    usage error (one line, exit 2).

    ``vllm serve`` parses with a sub-parser, which argparse drives through
    ``parse_known_args``; checking there catches the error before any engine starts.
    """
    from vllm_esp import options

    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = original(args, namespace)
        try:
            updates = options.apply_from_namespace(ns)
            options.check_engine_fields({**vars(ns), **updates})
        except ValueError as e:
            parser.error(str(e))
        return ns, rest

    parser.parse_known_args = parse_known_args


PATCH = Patch(
    name="cli_args",
    target="vllm.engine.arg_utils:EngineArgs",
    install=_install,
    why="--executor / --esp-* flags on vllm serve, folded into EngineArgs fields",
)
