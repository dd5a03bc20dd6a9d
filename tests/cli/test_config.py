"""`serve` and `worker` options from the command line, SIDELIGHT_* variables and a YAML file
(sidelight.cli.config): precedence, types, and errors that name the file or variable and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sidelight.cli import main
from sidelight.cli.config import ConfigError, describe, redact, resolve
from sidelight.cli.main import build_parser


def resolved(argv: list[str], environ: dict[str, str] | None = None) -> dict[str, object]:
    args = resolve(build_parser().parse_args(argv), environ or {}).args
    return vars(args)


def write(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = write(tmp_path, "port: 7001\nmetrics_port: 7101\nmax_batch_size: 8\nhost: 0.0.0.0\n")
    environ = {"SIDELIGHT_PORT": "7002", "SIDELIGHT_METRICS_PORT": "7102"}
    args = resolved(
        ["serve", "--model-repository", "/models", "--config", str(config), "--port", "7003"],
        environ,
    )
    assert args["port"] == 7003  # flag over environment and file
    assert args["metrics_port"] == 7102  # environment over file
    assert args["max_batch_size"] == 8  # file over default
    assert args["host"] == "0.0.0.0"
    assert args["max_wait_ms"] == 2.0  # the default
    assert args["model_repository"] == Path("/models")


def test_a_flag_given_with_its_default_value_still_beats_the_environment() -> None:
    args = resolved(
        ["serve", "--model-repository", "m", "--port", "50051"], {"SIDELIGHT_PORT": "7002"}
    )
    assert args["port"] == 50051


def test_the_file_may_be_named_by_sidelight_config(tmp_path: Path) -> None:
    config = write(tmp_path, "model_repository: /models\nredis_url: redis://r:6379/0\n")
    args = resolved(["worker"], {"SIDELIGHT_CONFIG": str(config)})
    assert args["model_repository"] == Path("/models")
    assert args["redis_url"] == "redis://r:6379/0"
    assert args["config"] == config


def test_environment_values_take_every_option_type() -> None:
    environ = {
        "SIDELIGHT_MODEL_REPOSITORY": "/models",
        "SIDELIGHT_NO_REFLECTION": "true",
        "SIDELIGHT_DEVICE": "cpu, cuda:1",
        "SIDELIGHT_MAX_WAIT_MS": "0.5",
        "SIDELIGHT_AUDIT": "best_effort",
        "SIDELIGHT_AUDIT_URL": "postgresql://u:p@db/sidelight",
        "SIDELIGHT_SERVICE_HOST": "10.0.0.1",  # Kubernetes' service links: not ours, ignored
    }
    args = resolved(["serve"], environ)
    assert args["no_reflection"] is True
    assert args["device"] == ["cpu", "cuda:1"]
    assert args["max_wait_ms"] == 0.5
    assert args["audit"] == "best_effort"
    assert args["audit_url"] == "postgresql://u:p@db/sidelight"


def test_one_file_configures_both_commands_through_sections(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "model_repository: /models\nredis_url: redis://r/0\n"
        "serve:\n  max_batch_size: 16\n  metrics_port: 9095\n"
        "worker:\n  processes: 2\n  metrics_port: 9096\n",
    )
    serve = resolved(["serve", "--config", str(config)])
    worker = resolved(["worker", "--config", str(config)])
    assert (serve["max_batch_size"], serve["metrics_port"]) == (16, 9095)
    assert (worker["processes"], worker["metrics_port"]) == (2, 9096)
    assert serve["redis_url"] == worker["redis_url"] == "redis://r/0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch: 8\n", "unknown key 'max_batch' for `sidelight serve`"),
        ("processes: 2\n", "unknown key 'processes' for `sidelight serve`"),
        ("serve:\n  max_batch: 8\n", "unknown key 'serve.max_batch'"),
        ("port: fifty\n", "key 'port': expected an integer, got str 'fifty'"),
        ("port: true\n", "key 'port': expected an integer, got bool True"),
        ("no_reflection: 1\n", "key 'no_reflection': expected a boolean, got int 1"),
        ("audit: loose\n", "key 'audit': 'loose' is not one of ['strict', 'best_effort', 'off']"),
        ("device: [1]\n", "key 'device': expected a list of names"),
        ("- port\n", "expected a mapping of keys, got list"),
        ("port: [\n", "not valid YAML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = write(tmp_path, text)
    assert main(["serve", "--model-repository", "m", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"config file {config}" in error
    assert message in error


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*absent\.yaml: No such file"):
        resolved(["serve", "--config", str(tmp_path / "absent.yaml")])


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SIDELIGHT_MAX_BATCH_SIZE",
            "many",
            "SIDELIGHT_MAX_BATCH_SIZE='many': expected an integer",
        ),
        ("SIDELIGHT_NO_REFLECTION", "maybe", "expected a boolean"),
        ("SIDELIGHT_AUDIT", "loose", "'loose' is not one of"),
        ("SIDELIGHT_PORT", "tcp://10.0.0.1:50051", "enableServiceLinks: false"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="environment variable") as caught:
        resolved(["serve", "--model-repository", "m"], {variable: value})
    assert message in str(caught.value)


def test_a_required_option_missing_everywhere_names_its_three_spellings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["worker", "--model-repository", "m"]) == 2
    error = capsys.readouterr().err
    assert "sidelight worker needs redis_url" in error
    assert "--redis-url, SIDELIGHT_REDIS_URL or `redis_url:`" in error


def test_passwords_in_urls_are_not_logged() -> None:
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("postgresql://audit:s3cret@db/x") == "postgresql://audit:***@db/x"
    assert redact("redis://redis:6379/0") == "redis://redis:6379/0"
    line = describe(
        resolve(
            build_parser().parse_args(["worker", "--model-repository", "m"]),
            {"SIDELIGHT_REDIS_URL": "redis://:s3cret@redis/0"},
        )
    )
    assert "s3cret" not in line
    assert "environment: redis_url=redis://:***@redis/0" in line


def test_help_answers_without_importing_torch() -> None:
    # `sidelight serve --help` in a container or a probe must not pay for torch's import.
    probe = (
        "import sys\nfrom sidelight.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "SIDELIGHT_CONFIG" in answer.stdout
    assert answer.stdout.strip().endswith("False")


def test_secret_urls_may_come_from_files_named_by_flag_variable_or_config(
    tmp_path: Path,
) -> None:
    # A mounted Secret: the URL stays out of the process list (the command line) and the log.
    redis_file = tmp_path / "redis-url"
    redis_file.write_text("redis://:s3cret@redis:6379/0\n")
    audit_file = tmp_path / "audit-url"
    audit_file.write_text("postgresql://audit:pa55@db/x")
    config = write(tmp_path, f"audit_url_file: {audit_file}\n")
    argv = ["worker", "--model-repository", "m", "--config", str(config)]
    args = build_parser().parse_args(argv)
    found = resolve(args, {"SIDELIGHT_REDIS_URL_FILE": str(redis_file)})
    assert found.args.redis_url == "redis://:s3cret@redis:6379/0"  # the newline dropped
    assert found.args.audit_url == "postgresql://audit:pa55@db/x"
    line = describe(found)
    assert "s3cret" not in line and "pa55" not in line
    flagged = resolved(["serve", "--model-repository", "m", "--redis-url-file", str(redis_file)])
    assert flagged["redis_url"] == "redis://:s3cret@redis:6379/0"


def test_a_url_and_its_file_together_or_a_missing_file_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("redis://r/0")
    both = ["serve", "--model-repository", "m", "--redis-url", "redis://x/0"]
    with pytest.raises(ConfigError, match="redis_url and redis_url_file"):
        resolved([*both, "--redis-url-file", str(secret)])
    with pytest.raises(ConfigError, match=r"redis_url_file .*missing"):
        resolved(
            ["serve", "--model-repository", "m", "--redis-url-file", str(tmp_path / "missing")]
        )


def test_audit_commands_read_the_url_file_too(tmp_path: Path) -> None:
    from sidelight.cli.config import read_secret_files

    secret = tmp_path / "url"
    secret.write_text("postgresql://a:b@db/x\n")
    args = build_parser().parse_args(["audit", "verify", "--audit-url-file", str(secret)])
    read_secret_files(args)
    assert args.audit_url == "postgresql://a:b@db/x"
