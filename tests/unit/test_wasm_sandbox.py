"""Sandbox limits from corral.toml and the command line: defaults, checks, and the errors they give."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.adapters.wasm.__main__ import parse_args, specs_from_args
from corral.adapters.wasm.sandbox import WasiSandbox, WasmSandbox, load_sandbox, specs_from_toml
from corral.errors import ConfigError


def test_defaults_are_safe() -> None:
    sandbox = load_sandbox(None, "[modules.m.sandbox]")
    assert sandbox == WasmSandbox()
    assert sandbox.timeout_ms == 1000
    assert sandbox.fuel is None
    assert sandbox.memory_bytes == 64 * 1024 * 1024
    assert sandbox.wasi is None  # no WASI unless configured


@pytest.mark.parametrize(
    ("timeout_ms", "tick_ms", "ticks"),
    [(1000, 10.0, 101), (100, 10.0, 11), (30, 3.0, 11), (5, 1.0, 6), (1, 1.0, 2)],
)
def test_the_epoch_deadline_never_stops_a_call_before_its_budget(
    timeout_ms: int, tick_ms: float, ticks: int
) -> None:
    sandbox = WasmSandbox(timeout_ms=timeout_ms)
    assert sandbox.tick_ms == tick_ms
    assert sandbox.deadline_ticks == ticks
    assert (sandbox.deadline_ticks - 1) * sandbox.tick_ms >= timeout_ms


def test_worker_threads_get_the_wasm_stack_plus_host_room() -> None:
    sandbox = WasmSandbox(max_stack_bytes=100_000)
    assert sandbox.thread_stack_bytes % (64 * 1024) == 0
    assert sandbox.thread_stack_bytes >= 100_000 + 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"timeout_ms": 0}, "Expected `int` >= 1 - at `$.timeout_ms`"),
        ({"memory_mb": "lots"}, "Expected `int`, got `str` - at `$.memory_mb`"),
        ({"timeout": 5}, "Object contains unknown field `timeout`"),
        (
            {"wasi": {"dirs": {"data": "/tmp"}}},
            "WASI guest path 'data' must be absolute, like '/data' - at `$.dirs`",
        ),
    ],
)
def test_a_bad_sandbox_names_the_table_and_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_sandbox(raw, "[modules.physics.sandbox]")
    assert str(caught.value).startswith("invalid sandbox in [modules.physics.sandbox]: ")
    assert message in str(caught.value)


def test_wasi_dirs_are_resolved_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    sandbox = WasmSandbox(wasi=WasiSandbox(dirs={"/data": "data"})).resolve_dirs(tmp_path)
    assert sandbox.wasi is not None
    assert sandbox.wasi.dirs == {"/data": str((tmp_path / "data").resolve())}
    with pytest.raises(ConfigError, match=r"WASI directory 'nope' \(guest path '/x'\) is not a directory"):
        WasmSandbox(wasi=WasiSandbox(dirs={"/x": "nope"})).resolve_dirs(tmp_path)


def test_corral_toml_wasm_modules_are_read_with_their_sandbox(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        '[modules.interpreter]\ncommand = ["x"]\n\n'
        '[modules.physics]\nkind = "wasm"\nfile = "examples/wasm/physics.wat"\n'
        "[modules.physics.sandbox]\ntimeout_ms = 250\npool_size = 3\n\n"
        '[modules.other]\nkind = "wasm"\nfile = "/abs/other.wasm"\n'
    )
    specs = specs_from_toml(config)
    assert [(s.name, s.file) for s in specs] == [
        ("physics", tmp_path / "examples/wasm/physics.wat"),
        ("other", Path("/abs/other.wasm")),
    ]
    assert specs[0].sandbox == WasmSandbox(timeout_ms=250, pool_size=3)
    assert [s.name for s in specs_from_toml(config, ["other"])] == ["other"]
    with pytest.raises(
        ConfigError, match=r"has no wasm module named interpreter \(wasm modules: physics, other\)"
    ):
        specs_from_toml(config, ["interpreter"])


def test_corral_toml_errors_name_the_file_and_table(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        '[modules.physics]\nkind = "wasm"\nfile = "p.wat"\n[modules.physics.sandbox]\nfuel = -1\n'
    )
    with pytest.raises(ConfigError) as caught:
        specs_from_toml(config)
    assert str(caught.value) == (
        f"invalid sandbox in {config} [modules.physics.sandbox]: Expected `int` >= 1 - at `$.fuel`"
    )
    config.write_text('[modules.physics]\nkind = "wasm"\n')
    with pytest.raises(ConfigError, match=r"wasm module physics has no file - at `\$.modules.physics.file`"):
        specs_from_toml(config)


def test_command_line_modules_and_sandboxes() -> None:
    args = parse_args(["--module", "physics=p.wat", "--sandbox", 'physics={"timeout_ms": 50}'])
    (spec,) = specs_from_args(args)
    assert (spec.name, spec.file, spec.sandbox.timeout_ms) == ("physics", Path("p.wat"), 50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no wasm module to host: give --module NAME=FILE or --config corral.toml"),
        (["--module", "physics"], "--module 'physics': expected NAME=VALUE"),
        (["--module", "a.b=x.wat"], "--module 'a.b=x.wat': module name 'a.b' contains '.'"),
        (["--module", "a=x.wat", "--sandbox", "b={}"], "--sandbox b=...: no --module b=FILE to apply it to"),
        (["--module", "a=x.wat", "--sandbox", "a={"], "--sandbox a=...: not JSON"),
        (
            ["--module", "a=x.wat", "--sandbox", 'a={"pool_size": 0}'],
            "Expected `int` >= 1 - at `$.pool_size`",
        ),
    ],
)
def test_command_line_mistakes_are_explained(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        specs_from_args(parse_args(argv))
    assert message in str(caught.value)


def test_a_module_given_twice_is_refused(tmp_path: Path) -> None:
    twice = parse_args(["--module", "a=x.wat", "--module", "a=y.wat"])
    with pytest.raises(ConfigError, match=r"^--module a=\.\.\. is given more than once$"):
        specs_from_args(twice)
    config = tmp_path / "corral.toml"
    config.write_text('[modules.a]\nkind = "wasm"\nfile = "a.wat"\n')
    clash = parse_args(["--config", str(config), "--module", "a=x.wat"])
    with pytest.raises(ConfigError, match=r"^module a is given more than once$"):
        specs_from_args(clash)
