"""Label templates: one plain ``{}``, filled exactly as ``str.format`` fills it, and nothing else accepted."""

from __future__ import annotations

import pytest

from ruclip_tiny.template import TemplateError, fill_template, parse_template


@pytest.mark.parametrize("template", ["{}", "фото: {}", "a {} b", "{{x}} {} }}", "{:}", "{{ {} }}"])
def test_a_valid_template_fills_as_str_format_does(template):
    labels = ["кошка", "{0}", "{}", ""]
    assert fill_template(template, labels) == [template.format(label) for label in labels]


@pytest.mark.parametrize("template, why", [
    ("no slot", "no {}"),
    ("{{}}", "no {}"),
    ("{} и {}", "2 replacement fields"),
    ("{0}", "plain {}"),
    ("{name}", "plain {}"),
    ("{!r}", "plain {}"),
    ("{:>20000000}", "plain {}"),
    ("{:{}}", "plain {}"),
    ("{[0]}", "plain {}"),
    ("{", "Single '{'"),
    ("}", "Single '}'"),
])
def test_anything_but_one_plain_slot_is_refused_naming_the_template(template, why):
    with pytest.raises(TemplateError) as error:
        parse_template(template)
    assert f"template {template!r}" in str(error.value) and why in str(error.value)


def test_the_length_limit_is_checked_from_the_parts_before_any_text_is_built():
    template = "фото: {}!"
    assert parse_template(template).filled_length("кошка") == len(template.format("кошка"))
    assert fill_template(template, ["a" * 3], max_chars=10) == ["фото: aaa!"]
    with pytest.raises(TemplateError, match=r"labels\[1\] with the template: 11 characters, more than --limit=10"):
        fill_template(template, ["a", "a" * 4], max_chars=10, limit_name="--limit")


def test_a_long_template_is_shortened_in_the_message():
    with pytest.raises(TemplateError) as error:
        parse_template("x" * 10_000)
    assert len(str(error.value)) < 400


def test_reference_zero_shot_refuses_a_format_spec_before_tokenizing(reference_model):
    from ruclip_tiny.zero_shot import zero_shot_probs

    tokenized = []

    def tokenizer(texts):  # records whether any text was ever built and tokenized
        tokenized.append(texts)
        raise AssertionError("tokenized")

    with pytest.raises(TemplateError, match="plain {}"):
        zero_shot_probs(reference_model, tokenizer, None, ["кошка"] * 32, template="{:>20000000}")
    assert tokenized == []


def test_collection_classify_refuses_a_format_spec_before_any_image_is_read(tmp_path):
    from runtime.collection import classify_images
    from runtime.embedder import Embedder
    from tests.runtime.fake_bundle import build_fake_bundle

    bundle = build_fake_bundle(tmp_path / "bundle")
    missing = [tmp_path / "never-read.jpg"]
    with Embedder.load(bundle) as embedder, pytest.raises(TemplateError, match="plain {}"):
        classify_images(embedder, missing, ["кошка", "собака"], template="{:>20000000}")
