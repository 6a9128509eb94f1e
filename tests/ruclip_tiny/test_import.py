"""`import ruclip_tiny` stays torch-free: the runtime relies on the spec and preprocessing without torch."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_importing_the_package_and_its_torch_free_parts_loads_no_torch():
    modules = _modules_after(
        "import ruclip_tiny, ruclip_tiny.spec, ruclip_tiny.transform, ruclip_tiny.tokenizer, ruclip_tiny.demo\n"
        "ruclip_tiny.image_transform(); ruclip_tiny.VISUAL.inputs[0].symbolic_shape"
    )
    assert "ruclip_tiny" in modules
    assert not {"torch", "timm", "transformers", "torchvision"} & modules


def test_torch_parts_load_on_first_use():
    modules = _modules_after("import ruclip_tiny\nruclip_tiny.RuCLIPTiny")
    assert {"torch", "ruclip_tiny.model"} <= modules


def test_unknown_attribute_is_an_attribute_error():
    import ruclip_tiny

    try:
        ruclip_tiny.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
