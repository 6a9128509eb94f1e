"""The `ruclip-tiny` command: the demo runs end to end on the built-in default; bad input ends in a clear error."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ruclip_tiny.demo import demo_photos


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruclip_tiny.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_demo_scores_every_demo_photo_and_says_the_weights_are_synthetic():
    result = _run("demo", "--top", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SYNTHETIC weights" in out and "synthetic (seed 0)" in out and "shipped demo vocabulary" in out
    for photo in demo_photos():
        line = next(line for line in out.splitlines() if line.strip().startswith(photo.name))
        scores = [float(x) for x in re.findall(r"\d\.\d{3}", line)]
        assert len(scores) == 2 and 0 < scores[1] <= scores[0] <= 1


def test_missing_checkpoint_is_a_one_line_error_not_a_traceback(tmp_path):
    missing = tmp_path / "ru-clip-tiny.pkl"
    result = _run("demo", "--checkpoint", str(missing))
    assert result.returncode == 2
    assert f"checkpoint {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# --- bad numbers, help, entry points ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "bundle", "--texts", "t.txt", "--out", "o.npz", "--batch-size", "0"],
        ["embed", "bundle", "--texts", "t.txt", "--out", "o.npz", "--batch-size", "-3"],
        ["classify", "bundle", "cat.jpg", "--labels", "кошка", "--batch-size", "0"],
        ["classify", "bundle", "cat.jpg", "--labels", "кошка", "--top", "0"],
        ["search", "c.npz", "кошка", "--top", "-1"],
        ["demo", "--top", "0"],
        ["bench", "bundle", "--threads", "0"],
        ["bench", "bundle", "--rounds", "-2"],
        ["build-engines", "bundle", "--max-batch", "0"],
        ["build-engines", "bundle", "--opt-seq", "-1"],
        ["build-engines", "bundle", "--workspace-gib", "0"],
        ["serve", "bundle", "--max-batch", "0"],
        ["serve", "bundle", "--max-items", "-3"],
        ["serve", "bundle", "--decode-workers", "0"],
        ["serve", "bundle", "--max-wait-ms", "-1"],
        ["triton-repo", "bundle", "--out", "r", "--instances", "0"],
        ["triton-repo", "bundle", "--out", "r", "--max-queue-delay-us", "-1"],
        ["embed", "bundle", "--texts", "t.txt", "--out", "o.npz", "--batch-size", "eight"],
    ],
)
def test_counts_and_sizes_below_their_minimum_are_argparse_errors(argv, capsys):
    from ruclip_tiny.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    option = next(arg for arg in reversed(argv) if arg.startswith("--"))
    assert f"argument {option}:" in err and "Traceback" not in err


def _option_help(help_text: str, option: str) -> str:
    """The help block of one option in a --help text, whitespace collapsed."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(option))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("-")
                or not lines[i].strip()), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_every_option_with_a_default_shows_it_in_help():
    import argparse

    from ruclip_tiny.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, parser in subcommands.choices.items():
        help_text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            shown = _option_help(help_text, action.option_strings[0])
            assert "(default" in shown, f"{name} {action.option_strings[0]}: no default in {shown!r}"
            checked += 1
    assert checked > 30
    classify = subcommands.choices["classify"].format_help()
    assert "(default: auto)" in _option_help(classify, "--backend")
    serve = subcommands.choices["serve"].format_help()
    assert "(default: 8000)" in _option_help(serve, "--port")
    assert "(default: onnxruntime)" in _option_help(subcommands.choices["triton-repo"].format_help(), "--platform")


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "ruclip_tiny", "embed", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: ruclip-tiny embed" in result.stdout and "--strict" in result.stdout
    result = subprocess.run([sys.executable, "-m", "ruclip_tiny", "no-such-command"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_license_is_the_apache_2_0_text_pyproject_names():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[2]
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (root / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 11000


# --- a torch-free install ---------------------------------------------------------------------------------------------

# What the export extra brings: on a base install (pip install .) none of these import.
EXPORT_EXTRA_MODULES = ("torch", "torchvision", "timm", "transformers", "safetensors", "onnx", "onnxscript",
                        "polygraphy")


def _run_without(modules: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"for name in {modules!r}: sys.modules[name] = None  # import fails as if not installed\n"
        "from ruclip_tiny.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["demo", "export", "triton-repo"])
def test_commands_that_need_the_export_extra_name_it_on_a_torch_free_install(command, tmp_path):
    out = tmp_path / "out"
    argv = {"demo": ["demo"], "export": ["export", "--out", str(out)],
            "triton-repo": ["triton-repo", str(_fake_bundle(tmp_path)), "--out", str(out)]}[command]
    result = _run_without(EXPORT_EXTRA_MODULES, *argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"ruclip-tiny {command}: error: {command} needs the export extra" in result.stderr
    assert "pip install '.[export]'" in result.stderr
    assert not out.exists()


def test_serve_names_the_serve_extra_when_it_is_missing(tmp_path):
    result = _run_without(("fastapi", "uvicorn"), "serve", str(_fake_bundle(tmp_path)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "serve needs the serve extra" in result.stderr and "pip install '.[serve]'" in result.stderr


def _fake_bundle(tmp_path):
    from tests.runtime.fake_bundle import build_fake_bundle

    return build_fake_bundle(tmp_path / "bundle")


# --- refusals that must come in seconds, Ctrl-C ----------------------------------------------------------------------


def test_bench_refuses_tensorrt_it_cannot_run_before_any_timing(tmp_path, capsys):
    from ruclip_tiny.cli import main

    out = tmp_path / "bench"
    assert main(["bench", str(_fake_bundle(tmp_path)), "--backends", "tensorrt", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "--backends tensorrt cannot run on this machine" in captured.err
    assert "TensorRT backend not available" in captured.err
    assert not out.exists() and "loading" not in captured.err  # refused before the baseline or any backend loaded


@pytest.mark.slow
def test_ctrl_c_during_embed_exits_130_without_a_traceback(exported_bundle, tmp_path):
    import shutil
    import signal
    import threading
    import time

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(400):  # long enough to be interrupted mid-job on any machine
        photo = demo_photos()[index % len(demo_photos())]
        shutil.copy(photo, folder / f"{index:03d}{photo.suffix}")
    out = tmp_path / "photos.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "ruclip_tiny", "embed", str(exported_bundle), "--images", str(folder),
         "--out", str(out), "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stderr = bytearray()

    def read_stderr():
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            stderr.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while b"embedding images" not in stderr:
        assert process.poll() is None, bytes(stderr).decode()
        assert time.monotonic() < deadline, "embedding never started"
        time.sleep(0.05)
    time.sleep(1.0)  # inside the job: images are being decoded and encoded
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    text = bytes(stderr).decode()
    # embed keeps the shards it finished and says, in one line, how to continue (other commands: "interrupted")
    assert "ruclip-tiny embed: stopped by SIGINT" in text and "Traceback" not in text
    assert f"continue with: ruclip-tiny embed {exported_bundle}" in text and text.rstrip().endswith("--resume")
    assert not out.exists() and not list(tmp_path.glob(".photos.npz*"))
    assert (tmp_path / "photos.npz.parts").is_dir()


def test_ctrl_c_in_any_other_command_exits_130_saying_interrupted():
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "ruclip_tiny", "demo"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while "loading the model" not in line:  # the stage line is written before the model loads
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        line += process.stdout.read(1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    stderr = process.stderr.read()
    assert "ruclip-tiny demo: interrupted" in stderr and "Traceback" not in stderr


# --- version and the command package -------------------------------------------------------------------------------


def test_version_prints_the_package_version_from_its_metadata():
    from importlib import metadata

    import ruclip_tiny

    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ruclip-tiny {metadata.version('ruclip-tiny')}"
    assert ruclip_tiny.__version__ == metadata.version("ruclip-tiny")


def test_version_falls_back_to_pyproject_in_a_source_tree_never_installed(tmp_path):
    import shutil
    from pathlib import Path

    import numpy
    import PIL

    import ruclip_tiny

    tree = tmp_path / "checkout"
    source = Path(ruclip_tiny.__file__).resolve().parent.parent
    shutil.copytree(source / "ruclip_tiny", tree / "ruclip_tiny", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "pyproject.toml").write_text('[project]\nname = "ruclip-tiny"\nversion = "9.8.7"\n')
    # The only other things on the path: numpy and Pillow, linked in without any distribution's metadata, so the
    # interpreter (-S: no site-packages) finds no installed ruclip-tiny, as in a checkout that was never installed.
    site = tmp_path / "site"
    site.mkdir()
    for module in (numpy, PIL):
        package = Path(module.__file__).parent
        for name in (package.name, f"{package.name}.libs", f"{package.name.lower()}.libs", "pillow.libs"):
            if (package.parent / name).exists() and not (site / name).exists():
                (site / name).symlink_to(package.parent / name)
    probe = "import sys; sys.path[:0] = sys.argv[1:]; import ruclip_tiny; print(ruclip_tiny.__version__)"
    result = subprocess.run([sys.executable, "-S", "-c", probe, str(tree), str(site)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "9.8.7"


def test_every_command_is_a_module_of_the_cli_package_with_register_and_run():
    from ruclip_tiny import cli

    parser = cli.build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    modules = {command.__name__.rsplit(".", 1)[1].replace("_", "-") for command in cli.COMMANDS}
    assert names == modules
    assert all(callable(command.register) and callable(command.run) for command in cli.COMMANDS)
