"""rbee-keeper: the command line people type. This module only wires arguments to the commands.

Exit codes: 0 ok, 1 error, 2 usage, 130 cancelled (Ctrl+C), 143 stopped by SIGTERM.
Settings come from flags, then RBEE_* variables, then config files, then defaults (``config show``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from rbee.client import HiveClient, QueenClient
from rbee.flags import add_flag, env_name
from rbee.keeper import audit, cluster, config, fleet, hive_models, hives, infer, logfiles, records, top
from rbee.keeper.config import OPTIONS, ConfigError, Resolved
from rbee.keeper.failures import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, EXIT_USAGE, KeeperError
from rbee.keeper.output import Output

EXIT_TERMINATED = 128 + signal.SIGTERM
BOOL_FLAGS = ("json", "keep", "no_autostart", "follow", "raw", "accept_new_host_key", "replace")

Handler = Callable[[argparse.Namespace, Resolved, Output], int]


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl+C so every cleanup path (stop the trio, close the stream) runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


# ---------------------------------------------------------------- flags


def _option(parser: argparse.ArgumentParser, key: str, **extra: Any) -> None:
    """A flag backed by a config key: default None, so unset means "ask the config" (config.load)."""
    option = OPTIONS[key]
    kwargs: dict[str, Any] = {"default": None, "help": option.help, **extra}
    if option.kind is bool:
        kwargs["action"] = "store_true"
    elif option.kind is not str:
        kwargs["type"] = option.kind
    add_flag(parser, option.flag, **kwargs)


def _switch(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    add_flag(parser, flag, action="store_true", default=False, help=help_text)


def _sub(subs: Any, name: str, help_text: str, handler: Handler | None = None,
         parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=help_text, description=help_text, parents=list(parents), allow_abbrev=False)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    """Raises ValueError when an RBEE_* variable can't be read as its flag's type."""
    queen = argparse.ArgumentParser(add_help=False)
    _option(queen, "queen_url", metavar="URL")
    _option(queen, "api_key", metavar="KEY")
    hive = argparse.ArgumentParser(add_help=False)
    _option(hive, "hive_url", metavar="URL")
    _option(hive, "cluster_key", metavar="KEY")
    listing = argparse.ArgumentParser(add_help=False)
    _switch(listing, "--json", "print the queen's or hive's JSON answer instead of a table")

    root = argparse.ArgumentParser(prog="rbee-keeper", allow_abbrev=False,
                                   description="rbee-keeper: run prompts on your rbee fleet and manage it.",
                                   epilog="exit codes: 0 ok, 1 error, 2 usage, 130 cancelled")
    subs = root.add_subparsers(dest="command", metavar="COMMAND")

    p = _sub(subs, "infer", "run one prompt; tokens stream to stdout", _infer, [queen])
    add_flag(p, "--prompt", required=True, metavar="TEXT", help="the prompt; '-' reads it from stdin")
    _option(p, "model", metavar="REF")
    _option(p, "max_tokens", metavar="N")
    _option(p, "temperature", metavar="T")
    add_flag(p, "--seed", type=int, default=None, metavar="S", help="sampling seed, for repeatable answers")
    add_flag(p, "--system", default=None, metavar="TEXT", help="a system message before the prompt")
    _switch(p, "--raw", "send the prompt as plain text to continue, without the model's chat template")
    _switch(p, "--json", "print the raw stream events, one JSON object per line")
    _switch(p, "--keep", "when a local cluster had to be started, leave it running (stop: rbee-keeper down)")
    _option(p, "no_autostart")
    _option(p, "slots", metavar="N", help="slots of the worker started when no queen answers")
    _option(p, "backend", metavar="NAME", help="backend of the worker started when no queen answers (cpu, cuda…)")
    add_flag(p, "--hive", default=None, metavar="NAME", help="serve it only on this hive's workers")

    p = _sub(subs, "up", "run queen + hive + one worker here, in the foreground", _up)
    _option(p, "queen_port", metavar="PORT")
    _option(p, "hive_port", metavar="PORT")
    _option(p, "slots", metavar="N")
    _option(p, "backend", metavar="NAME")
    _option(p, "model", metavar="REF", help="model for the worker (default: the built-in default model)")
    _sub(subs, "down", "stop what `rbee-keeper up` (or infer --keep) started", _down)
    _sub(subs, "status", "what runs locally, and its health", _status, [queen])
    _sub(subs, "top", "the fleet live: workers, slots, queue, requests in flight (q quits); a snapshot when "
         "not on a terminal", _top, [queen])

    workers = _sub(subs, "workers", "the queen's workers").add_subparsers(dest="action", metavar="ACTION",
                                                                           required=True)
    _sub(workers, "list", "list the workers", _workers_list, [queen, listing])
    _sub(workers, "health", "probe every worker now", _workers_health, [queen, listing])
    p = _sub(workers, "shutdown", "drain and stop one worker", _workers_shutdown, [queen])
    add_flag(p, "--id", dest="worker_id", required=True, metavar="ID", help="the worker to stop")

    models = _sub(subs, "models", "a hive's models").add_subparsers(dest="action", metavar="ACTION", required=True)
    _sub(models, "list", "list the hive's models", _models_list, [hive, listing])
    p = _sub(models, "download", "download a model to the hive, with progress", _models_download, [hive])
    p.add_argument("ref", metavar="REF", help="hf:org/repo[:file.gguf], https://.../x.gguf or file:///x.gguf")

    hives = _sub(subs, "hives", "the queen's hives, here and on other machines (over SSH)").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    _sub(hives, "list", "list the hives: state, version, workers, free RAM, last heartbeat", _hives_list,
         [queen, listing])
    p = _sub(hives, "add", "record a machine the queen reaches over SSH (checks SSH and rbee-hive there)",
             _hives_add, [queen])
    p.add_argument("name", metavar="NAME", help="the hive's name in the fleet")
    add_flag(p, "--ssh", required=True, metavar="[USER@]HOST[:PORT]", help="how to log in (HOST may be an "
             "ssh_config alias)")
    add_flag(p, "--identity", default=None, metavar="FILE", help="private key file on the queen's machine")
    add_flag(p, "--remote-dir", default=None, metavar="DIR",
             help="where rbee lives there (default: ~/.local/share/rbee)")
    # Not the `hive_port` config key (the port of the hive `up` starts here): this one is the node's.
    p.add_argument("--hive-port", dest="node_hive_port", type=int, default=None, metavar="PORT",
                   help="the hive's port there (default: 9200)")
    _switch(p, "--accept-new-host-key", "record the host key on first contact (else it must be in known_hosts)")
    _switch(p, "--replace", "replace a hive already added under this name")
    for name, help_text, handler in (
        ("install", "install this rbee there, offline (a wheelhouse built here, copied over SSH)", _hives_install),
        ("start", "start the hive there over SSH and wait until it registered", _hives_start),
        ("stop", "stop the hive there (and its workers)", _hives_stop),
        ("remove", "forget the hive (a stopped one)", _hives_remove),
    ):
        _sub(hives, name, help_text, handler, [queen]).add_argument("name", metavar="NAME", help="the hive")

    p = _sub(subs, "logs", "show the local programs' logs, or a hive's over SSH (--hive)", _logs, [queen])
    p.add_argument("program", nargs="?", help="queen-rbee, rbee-hive, llm-worker-rbee or a worker id")
    add_flag(p, "--hive", default=None, metavar="NAME", help="a hive the queen started over SSH: its logs there")
    _switch(p, "--follow", "keep printing new lines (Ctrl+C to stop)")
    add_flag(p, "--lines", type=int, default=50, metavar="N", help="how many of the last lines to show")

    configs = _sub(subs, "config", "rbee-keeper's settings").add_subparsers(dest="action", metavar="ACTION",
                                                                             required=True)
    _sub(configs, "show", "the merged settings and where each value came from", _config_show)
    p = _sub(configs, "example", "print a commented config file with every setting and its default", _config_example)
    p.add_argument("program", choices=("queen", "hive", "keeper"), help="whose settings: queen-rbee's [queen] "
                   "table, rbee-hive's [hive] table or rbee-keeper's own (top-level) keys")

    audits = _sub(subs, "audit", "a queen's or hive's audit log").add_subparsers(dest="action", metavar="ACTION",
                                                                                 required=True)
    p = _sub(audits, "verify", "check the hash chain: OK, or the first line edited, removed or reordered (exit 1)",
             audit.verify_command)
    p.add_argument("path", metavar="PATH", help="the --audit-log file (its rotated PATH.000001 … are read too)")
    return root


def normalise_switches(args: argparse.Namespace) -> None:
    """A switch set through its variable arrives as text ("0", "false"); make it a bool."""
    for name in BOOL_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, config.parse_bool(value, f"environment {env_name('--' + name)}"))


# ---------------------------------------------------------------- commands


def _read_prompt(raw: str) -> str:
    text = sys.stdin.read() if raw == "-" else raw
    if not text.strip():
        raise KeeperError("the prompt is empty" + (" (nothing came on stdin)" if raw == "-" else ""),
                          'pass --prompt "TEXT", or pipe text in with --prompt -', exit_code=EXIT_USAGE)
    return text


def _infer(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    opts = infer.InferOptions(
        prompt=_read_prompt(args.prompt), queen_url=cfg.queen_url, model=cfg.model, max_tokens=cfg.max_tokens,
        temperature=cfg.temperature, seed=args.seed, system=args.system, raw=args.raw, json=args.json, keep=args.keep,
        api_key=cfg.api_key, no_autostart=cfg.no_autostart, slots=cfg.slots, backend=cfg.backend, queen_port=cfg.queen_port,
        hive_port=cfg.hive_port, hive=args.hive,
    )
    return infer.run(opts, out)


def _up(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    if not 1 <= cfg.slots <= 64:
        raise KeeperError(f"--slots must be between 1 and 64 (got {cfg.slots})", exit_code=EXIT_USAGE)
    return cluster.up(cluster.UpOptions(queen_port=cfg.queen_port, hive_port=cfg.hive_port, slots=cfg.slots,
                                        model=cfg.model, backend=cfg.backend), out)


def _down(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return cluster.down(out)


def _status(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return cluster.status(cfg.queen_url, cfg.api_key, out)


def _top(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return top.run(_queen(cfg), out)


def _queen(cfg: Resolved) -> QueenClient:
    return QueenClient(cfg.queen_url, api_key=cfg.api_key, timeout=10)


def _workers_list(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return fleet.workers_list(_queen(cfg), out, args.json)


def _workers_health(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return fleet.workers_health(_queen(cfg), out, args.json)


def _workers_shutdown(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return fleet.workers_shutdown(_queen(cfg), args.worker_id, out)


def _hives_list(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.list_nodes(_queen(cfg), out, args.json)


def _hives_add(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.add(_queen(cfg), args.name, args.ssh, out, identity=args.identity, remote_dir=args.remote_dir,
                     hive_port=args.node_hive_port, accept_new_host_key=args.accept_new_host_key, replace=args.replace)


def _hives_install(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.install(_queen(cfg), args.name, out)


def _hives_start(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.start(_queen(cfg), args.name, out)


def _hives_stop(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.stop(_queen(cfg), args.name, out)


def _hives_remove(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hives.remove(_queen(cfg), args.name, out)


def _hive(cfg: Resolved) -> HiveClient:
    return HiveClient(cfg.hive_url, api_key=cfg.cluster_key, timeout=10)


def _models_list(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hive_models.models_list(_hive(cfg), out, args.json)


def _models_download(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    return hive_models.download(_hive(cfg), args.ref, out)


def _logs(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    if args.hive:
        return hives.logs(_queen(cfg), args.hive, args.program, args.lines, args.follow, sys.stdout)
    return logfiles.show(records.log_dir(), args.program, args.lines, args.follow, out, sys.stdout)


def _config_show(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    out.table(["setting", "value", "from"],
              [[key, config.shown(key, cfg.values[key]), cfg.sources[key]] for key in OPTIONS])
    files = config.config_paths(os.environ)
    out.say("files (lowest priority first): " + ", ".join(
        f"{p}{'' if p.is_file() else ' (absent)'}" for p in files))
    out.say(f"state dir: {records.state_dir()}")
    return EXIT_OK


def _config_example(args: argparse.Namespace, cfg: Resolved, out: Output) -> int:
    sys.stdout.write(config_example(args.program))
    return EXIT_OK


def config_example(program: str) -> str:
    """The example file for ``program``, generated from its settings (so it cannot drift from them)."""
    if program == "keeper":
        return config.example()
    from rbee.flags import config_example as table  # the servers' settings (and aiohttp) only when asked
    if program == "queen":
        from rbee.queen.settings import QueenSettings
        return table(QueenSettings, "queen-rbee")
    from rbee.hive.settings import HiveSettings
    return table(HiveSettings, "rbee-hive")


# ---------------------------------------------------------------- entry point


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output()
    try:
        parser = build_parser()
    except ValueError as exc:
        out.note(f"rbee-keeper: error: an RBEE_* variable has a value of the wrong type ({exc})")
        return EXIT_USAGE
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        normalise_switches(args)
        cfg = config.load(argv, vars(args))
    except ConfigError as exc:
        out.note(f"rbee-keeper: error: {exc}")
        return EXIT_USAGE
    for warning in cfg.warnings:
        out.note(f"rbee-keeper: warning: {warning}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.handler(args, cfg, out)
    except KeeperError as err:
        return out.fail(err)
    except Terminated:
        out.note("rbee-keeper: stopped (SIGTERM)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        out.note("rbee-keeper: cancelled")
        return EXIT_CANCELLED
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to tell it, and no traceback at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
