"""Where `serve` and `worker` take their options from, first found wins:

    1. the command line            --redis-url redis://...
    2. the environment             SIDELIGHT_REDIS_URL=redis://...      (SIDELIGHT_ + KEY)
    3. a YAML file                 redis_url: redis://...               (--config FILE or
                                                                         SIDELIGHT_CONFIG=FILE)
    4. the defaults of the command line

A key is an option's long name with underscores (`--max-batch-size` -> `max_batch_size`); a
switch (`--no-reflection`) is a boolean; a repeatable option (`--device`) a list (in the
environment: comma-separated). A file may hold keys for one command at its top level, and keys
for either command under `serve:` or `worker:` (which win over the top level), so that one file
can configure both. An unknown key or a value of the wrong type in the file, or a variable that
does not parse, is refused naming the file or the variable and the key. Other `SIDELIGHT_*`
variables are ignored: Kubernetes sets some for a Service named `sidelight`.

Secrets (the URLs of Redis and PostgreSQL, with their passwords) may instead be read from a
file, e.g. a mounted Kubernetes Secret, so that they appear neither in the process list nor in
the environment: `--redis-url-file`, `--audit-url-file` (or SIDELIGHT_REDIS_URL_FILE, or
`redis_url_file:` in the file), its content with surrounding whitespace dropped. Giving both a
URL and its file is refused. The log shows URLs with their password replaced by ***.

Read once, in `main()`, into the parsed arguments that the frozen settings are built from.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SIDELIGHT_"
CONFIG_ENV = "SIDELIGHT_CONFIG"
COMMANDS = ("serve", "worker")
_TRUE = ("1", "true", "yes", "on")
# Options whose value may come from a file instead: key -> the key of the file's path.
SECRET_FILES = {"redis_url": "redis_url_file", "audit_url": "audit_url_file"}
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, kw_only=True)
class Option:
    """One option of a command, as the file and the environment see it."""

    key: str  # max_batch_size
    flag: str  # --max-batch-size
    kind: str  # int, float, str, path, bool, list
    default: Any
    choices: tuple[str, ...] | None = None

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.key.upper()


@dataclass(frozen=True, kw_only=True)
class Resolved:
    """The arguments with every option filled in, and where each value came from."""

    args: argparse.Namespace
    sources: dict[str, str]  # key -> "flag", "environment", the file's path (defaults absent)
    config_file: Path | None


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used; the message names it and the key."""


def configurable(parser: argparse.ArgumentParser, command: str, required: Sequence[str]) -> None:
    """Add `--config` to `parser` and let its options come from the environment and the file
    too. The defaults move from argparse into `Option`s, so that an option left off the
    command line can be told from one given with its default value."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML file of options (keys: long option names with underscores); also "
        f"{CONFIG_ENV}. Every option may be set by {ENV_PREFIX}<KEY> too. Precedence: "
        "command line, environment, file, defaults",
    )
    options = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        flag = max(action.option_strings, key=len)
        options.append(
            Option(
                key=action.dest,
                flag=flag,
                kind=_kind(action),
                default=action.default,
                choices=tuple(action.choices) if action.choices else None,
            )
        )
        action.default = argparse.SUPPRESS
    parser.set_defaults(
        config_command=command, config_options=tuple(options), config_required=tuple(required)
    )


def _kind(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "bool"
    if isinstance(action, argparse._AppendAction):
        return "list"
    kinds = {int: "int", float: "float", Path: "path", None: "str", str: "str"}
    if action.type not in kinds:
        raise TypeError(f"{action.option_strings}: no configuration kind for {action.type}")
    return kinds[action.type]


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Resolved:
    """Fill in every option of a `configurable` command that the command line left out."""
    options: tuple[Option, ...] = args.config_options
    given = vars(args)
    path = given.get("config") or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    in_file = read_file(path, args.config_command, options) if path is not None else {}
    sources = {}
    for option in options:
        if option.key in given:
            sources[option.key] = "flag"
            continue
        if option.variable in environ:
            value = from_environment(option, environ[option.variable])
            sources[option.key] = "environment"
        elif option.key in in_file:
            value = in_file[option.key]
            sources[option.key] = str(path)
        else:
            value = option.default
        setattr(args, option.key, value)
    args.config = path
    for key, source in read_secret_files(args, sources).items():
        sources[key] = source
    flags = {option.key: option for option in options}
    for key in args.config_required:
        if getattr(args, key) is None:
            option = flags[key]
            raise ConfigError(
                f"sidelight {args.config_command} needs {key}: give {option.flag}, "
                f"{option.variable} or `{key}:` in the --config file"
            )
    return Resolved(args=args, sources=sources, config_file=path)


def read_secret_files(
    args: argparse.Namespace, sources: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Fill each secret option from its file, when a file is named; {key: "file PATH"} for
    those filled. ConfigError when a URL and its file are both given, or the file cannot be
    read. `sources`: where `resolve` found each option (a default URL is not "given")."""
    filled = {}
    for key, file_key in SECRET_FILES.items():
        path = getattr(args, file_key, None)
        if path is None:
            continue
        given = getattr(args, key, None)
        if given and (sources is None or key in sources):
            raise ConfigError(f"both {key} and {file_key} are given: one of them, please")
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{file_key} {path}: cannot read it ({exc.strerror or exc})") from exc
        setattr(args, key, text.strip())
        filled[key] = f"file {path}"
    return filled


def read_file(path: Path, command: str, options: Sequence[Option]) -> dict[str, Any]:
    """The file's values for `command`, typed and checked: its top level, then its section."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {_name(document)}")
    known = {option.key: option for option in options}
    values: dict[str, Any] = {}
    sections = []
    for key, value in document.items():
        if key in COMMANDS:
            if not isinstance(value, dict):
                raise ConfigError(f"config file {path}: `{key}:` must be a mapping of keys")
            if key == command:
                sections.append(value)
            continue
        values[str(key)] = value
    checked = {}
    for prefix, mapping in [("", values), *((f"{command}.", s) for s in sections)]:
        for key, value in mapping.items():
            if key not in known:
                raise ConfigError(
                    f"config file {path}: unknown key '{prefix}{key}' for `sidelight {command}` "
                    f"(keys are its long option names with underscores; options of one command "
                    f"only go under `serve:` or `worker:`)"
                )
            checked[key] = _typed(known[key], value, f"config file {path}: key '{prefix}{key}'")
    return checked


def from_environment(option: Option, text: str) -> Any:
    """A variable's text as the option's type."""
    where = f"environment variable {option.variable}={text!r}"
    try:
        if option.kind == "int":
            return _choice(option, int(text), where)
        if option.kind == "float":
            return float(text)
    except ValueError as exc:
        hint = ""
        if "://" in text:
            hint = (
                " (Kubernetes sets SIDELIGHT_PORT=tcp://... for a Service named `sidelight`: "
                "set enableServiceLinks: false in the pod)"
            )
        raise ConfigError(f"{where}: expected {_article(option.kind)}{hint}") from exc
    if option.kind == "bool":
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: expected a boolean (true/false, 1/0, yes/no, on/off)")
    if option.kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if option.kind == "path":
        return Path(text)
    return _choice(option, text, where)


def _typed(option: Option, value: Any, where: str) -> Any:
    wrong = ConfigError(f"{where}: expected {_article(option.kind)}, got {_name(value)}")
    if option.kind == "bool":
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool):  # YAML's `yes` is no number, path or name
        raise wrong
    if option.kind == "int":
        if not isinstance(value, int):
            raise wrong
        return _choice(option, value, where)
    if option.kind == "float":
        if not isinstance(value, int | float):
            raise wrong
        return float(value)
    if option.kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where}: expected a list of names, got {_name(value)}")
        return items
    if not isinstance(value, str):
        raise wrong
    return Path(value) if option.kind == "path" else _choice(option, value, where)


def _choice(option: Option, value: Any, where: str) -> Any:
    if option.choices is not None and value not in option.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(option.choices)}")
    return value


def _article(kind: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "list": "a list",
        "path": "a path (a string)",
        "str": "a string",
    }[kind]


def _name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def redact(value: str) -> str:
    """A URL with its password replaced by ***; anything else unchanged."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def describe(resolved: Resolved) -> str:
    """One log line: which options were set, from where (URL passwords redacted)."""
    by_source: dict[str, list[str]] = {}
    for key, source in resolved.sources.items():
        value = getattr(resolved.args, key)
        shown = redact(value) if isinstance(value, str) else value
        by_source.setdefault(source, []).append(f"{key}={shown}")
    parts = [f"{source}: {', '.join(items)}" for source, items in by_source.items()]
    return "options set by " + ("; ".join(parts) if parts else "nothing (all defaults)")
