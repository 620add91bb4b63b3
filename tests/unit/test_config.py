"""`corral.toml`: loading, validation with paths, dependency order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.config import ModuleConfig, NatsConfig, SystemConfig, load_config, start_layers
from corral.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    """Load `text` as corral.toml; return the ConfigError's message without the file name."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def modules(*specs: str) -> str:
    """`a`, `b:a`, `d:b,c` -> [modules.x] tables with a command and depends_on."""
    text = ""
    for spec in specs:
        name, _, deps = spec.partition(":")
        depends = ", ".join(f'"{d}"' for d in deps.split(",") if d)
        text += f'[modules.{name}]\ncommand = ["run-{name}"]\ndepends_on = [{depends}]\n\n'
    return text


# --- the repository's own file ---------------------------------------------------------------------


def test_the_repo_corral_toml_loads() -> None:
    config = load_config(REPO / "corral.toml")
    assert config.prefix == "corral"
    assert config.log_dir == ".corral/logs"
    assert config.grace_period == 10.0
    assert config.root == str(REPO)
    assert config.nats == NatsConfig(url="", port=4222, store_dir=".corral/nats", sync_interval="default")
    assert config.service("orchestrator").metrics_port == 0
    assert config.service("state").enabled is True  # not in the file: defaults
    assert list(config.modules) == ["interpreter", "compiler", "organism", "demo", "physics"]
    assert config.modules["physics"].kind == "wasm"
    interpreter = config.modules["interpreter"]
    assert interpreter.kind == "process"
    assert interpreter.command == ["{python}", "examples/modules/interpreter"]
    assert interpreter.depends_on == []
    assert interpreter.required is True
    assert interpreter.startup_timeout == 30.0
    assert config.module_argv("interpreter") == [sys.executable, str(REPO / "examples/modules/interpreter")]
    assert start_layers(config.modules) == [["compiler", "demo", "interpreter", "organism", "physics"]]


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.prefix == "corral"
    assert config.modules == {}
    assert config.nats.max_payload == 8 * 1024 * 1024
    assert config.root == str(tmp_path.resolve())


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"cannot read {path}: No such file or directory"


def test_invalid_toml(tmp_path: Path) -> None:
    assert refused(tmp_path, "prefix = \n").startswith("Invalid value")


# --- typos and bad values --------------------------------------------------------------------------


def test_a_typo_in_a_module_key_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, '[modules.x]\ncomand = ["run"]\n')
    assert message == "Object contains unknown field `comand` - at `$.modules.x`"


def test_a_typo_in_a_module_key_names_the_module(tmp_path: Path) -> None:
    message = refused(tmp_path, modules("alpha", "beta") + '[modules.gamma]\ncomand = ["run"]\n')
    assert "gamma" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('prefx = "acme"\n', "Object contains unknown field `prefx`"),
        ('[nats]\nurl = "nats://x:4222"\nprot = 1\n', "Object contains unknown field `prot` - at `$.nats`"),
        ("[services.health]\nport = 3\n", "Object contains unknown field `port` - at `$.services.health`"),
        ("[nats]\nport = 70000\n", "Expected `int` <= 65535 - at `$.nats.port`"),
        ("[nats]\nmax_payload = 10\n", "Expected `int` >= 1024 - at `$.nats.max_payload`"),
        ('[nats]\nmax_payload = "8MB"\n', "Expected `int`, got `str` - at `$.nats.max_payload`"),
        ("grace_period = 0\n", "Expected `float` > 0.0 - at `$.grace_period`"),
        (
            '[modules.x]\nkind = "docker"\ncommand = ["x"]\n',
            "Invalid enum value 'docker' - at `$.modules.x.kind`",
        ),
        ('[modules.x]\ncommand = "run x"\n', "Expected `array`, got `str` - at `$.modules.x.command`"),
        (
            '[modules.x]\ncommand = ["x"]\nstop_timeout = -1\n',
            "Expected `float` > 0.0 - at `$.modules.x.stop_timeout`",
        ),
    ],
)
def test_wrong_keys_and_values_are_refused_with_a_path(tmp_path: Path, text: str, message: str) -> None:
    assert refused(tmp_path, text) == message


@pytest.mark.parametrize("value", ["sometimes", "10", "10sec", "-1s", "1.5s", ""])
def test_a_bad_sync_interval_is_refused(tmp_path: Path, value: str) -> None:
    message = refused(tmp_path, f'[nats]\nsync_interval = "{value}"\n')
    assert message.startswith(
        f"sync_interval must be 'default', 'always' or a duration like '10s', got {value!r} - at `$.nats"
    ), message


def test_a_bad_sync_interval_names_its_path_once(tmp_path: Path) -> None:
    message = refused(tmp_path, '[nats]\nsync_interval = "sometimes"\n')
    assert message.count(" - at ") == 1, message


@pytest.mark.parametrize("value", ["default", "always", "10s", "250ms", "2m", "1h"])
def test_good_sync_intervals(tmp_path: Path, value: str) -> None:
    assert load_config(write(tmp_path, f'[nats]\nsync_interval = "{value}"\n')).nats.sync_interval == value


def test_an_unknown_service_section_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path, "[services.sheduler]\nmetrics_port = 9100\n") == (
        "unknown service [services.sheduler]: corral's services are state, health, scheduler, orchestrator"
    )


def test_a_known_service_section_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.scheduler]\nmetrics_port = 9101\nenv = { A = "1" }\n'))
    assert config.service("scheduler").metrics_port == 9101
    assert config.service("scheduler").env == {"A": "1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('prefix = "a b"\n', "prefix 'a b' contains ' ': use only letters, digits, '_' and '-'"),
        ('prefix = "acme..x"\n', "prefix is empty: it must be one subject token such as 'interpreter'"),
        (
            '[modules."a.b"]\ncommand = ["x"]\n',
            "module name 'a.b' contains '.': use only letters, digits, '_' and '-'",
        ),
        (
            '[modules.state]\ncommand = ["x"]\n',
            "module 'state' has the name of a corral service; choose another name",
        ),
        ("[modules.x]\n", "module 'x' is a process but has no command - at `$.modules.x.command`"),
        (
            '[modules.x]\nkind = "process"\ncommand = []\n',
            "module 'x' is a process but has no command - at `$.modules.x.command`",
        ),
        (
            '[modules.x]\ncommand = ["a"]\n[modules.x]\ncommand = ["b"]\n',
            "Cannot declare ('modules', 'x') twice (at line 3, column 11)",
        ),
        (
            '[modules.x]\ncommand = ["a"]\n[modules.x.limits]\nopen_files = 4\n',
            "Expected `int` >= 16 - at `$.modules.x.limits.open_files`",
        ),
        (
            '[modules.x]\ncommand = ["a"]\n[modules.x.restart]\nstrategy = "system_restart"\n',
            "module 'x': the system_restart strategy is for modules marked critical = true "
            "- at `$.modules.x.restart.strategy`",
        ),
        (
            '[modules.x]\ncommand = ["a"]\n[modules.x.restart]\nbackoff_initial = 5.0\nbackoff_max = 1.0\n',
            "backoff_max (1) is below backoff_initial (5) - at `$.modules.x.restart`",
        ),
        (
            '[modules.x]\ncommand = ["a"]\ninstances = 2\nmetrics_port = 9100\n',
            "module 'x': 2 instances cannot share metrics_port 9100; use 0 (any free port) "
            "- at `$.modules.x.metrics_port`",
        ),
        (
            '[modules.x]\nkind = "external"\ncommand = ["a"]\n',
            "module 'x' is external (started by someone else) but has a command - at `$.modules.x.command`",
        ),
        ('parallel_startup = "yes"\n', "Expected `bool`, got `str` - at `$.parallel_startup`"),
    ],
)
def test_invalid_names_and_modules_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert refused(tmp_path, text) == message


def test_an_external_module_needs_no_command(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[modules.remote]\nkind = "external"\n'))
    assert config.modules["remote"].kind == "external"
    assert config.modules["remote"].command == []


# --- dependencies ----------------------------------------------------------------------------------


def test_an_unknown_dependency_is_refused(tmp_path: Path) -> None:
    assert (
        refused(tmp_path, modules("a:zz", "b")) == "module 'a' depends on unknown module 'zz' (modules: a, b)"
    )


@pytest.mark.parametrize(
    ("specs", "cycle"),
    [
        (("a:b", "b:c", "c:a"), "a -> b -> c -> a"),
        (("a:a",), "a -> a"),
        (("a:b", "b:a"), "a -> b -> a"),
        (("root", "x:root,z", "y:x", "z:y"), "x -> z -> y -> x"),
        (("a:b", "b:c", "c:b"), "b -> c -> b"),  # `a` leads into the cycle but is not part of it
    ],
)
def test_a_cycle_is_refused_and_named(tmp_path: Path, specs: tuple[str, ...], cycle: str) -> None:
    assert refused(tmp_path, modules(*specs)) == f"dependency cycle: {cycle}"


def test_start_layers_of_a_diamond(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, modules("d:b,c", "c:a", "b:a", "a")))
    assert start_layers(config.modules) == [["a"], ["b", "c"], ["d"]]


def test_start_layers_direct() -> None:
    def m(*deps: str) -> ModuleConfig:
        return ModuleConfig(command=["x"], depends_on=list(deps))

    assert start_layers({}) == []
    assert start_layers({"z": m(), "y": m(), "x": m("z")}) == [["y", "z"], ["x"]]
    assert start_layers({"a": m(), "b": m("a"), "c": m("b"), "d": m("a", "c")}) == [
        ["a"],
        ["b"],
        ["c"],
        ["d"],
    ]
    with pytest.raises(ValueError, match=r"^module 'a' depends on unknown module 'q' \(modules: a\)$"):
        start_layers({"a": m("q")})


# --- argv ------------------------------------------------------------------------------------------


def test_python_placeholder_and_relative_paths_in_command(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "worker.py").write_text("")
    config = load_config(
        write(
            tmp_path,
            '[modules.w]\ncommand = ["{python}", "mods/worker.py", "--flag", "missing.py", "-c={python}"]\n',
        )
    )
    root = tmp_path.resolve()
    assert config.module_argv("w") == [
        sys.executable,
        str(root / "mods" / "worker.py"),  # exists next to corral.toml: made absolute
        "--flag",
        "missing.py",  # does not exist there: left as it is
        f"-c={sys.executable}",
    ]


def test_an_empty_argument_stays_empty(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[modules.w]\ncommand = ["{python}", "-c", "pass", ""]\n'))
    assert config.module_argv("w") == [sys.executable, "-c", "pass", ""]


def test_resolve_and_service_defaults(tmp_path: Path) -> None:
    config = SystemConfig(root=str(tmp_path))
    assert config.resolve("logs") == tmp_path / "logs"
    assert config.resolve("/var/log") == Path("/var/log")
    assert config.service("health").metrics_port == 0


def test_a_wasm_module_names_its_file_and_runs_on_the_wasm_adapter(tmp_path: Path) -> None:
    wasm = '[modules.physics]\nkind = "wasm"\nfile = "physics.wat"\n'
    path = write(tmp_path, wasm + "[modules.physics.sandbox]\ntimeout_ms = 100\n")
    config = load_config(path)
    assert config.modules["physics"].sandbox == {"timeout_ms": 100}
    assert config.module_argv("physics") == [
        sys.executable, "-m", "corral.adapters.wasm", "--config", str(path.resolve()), "--only", "physics",
    ]  # fmt: skip
    assert refused(tmp_path, '[modules.physics]\nkind = "wasm"\n') == (
        "module 'physics' is a wasm module but has no file - at `$.modules.physics.file`"
    )
    assert refused(tmp_path, '[modules.x]\ncommand = ["x"]\nfile = "x.wat"\n') == (
        "module 'x': file and sandbox are for kind = \"wasm\" - at `$.modules.x.kind`"
    )
