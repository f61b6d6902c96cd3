"""The libconfuse-syntax parser reads meta.conf the way fwup does."""

from __future__ import annotations

import pytest

from firmware.metaconf import MetaConfError, parse


def test_it_reads_unquoted_and_quoted_values() -> None:
    # given
    text = 'meta-version=1.3.0\nmeta-product="hub-demo"\nmeta-platform = rpi4\n'
    # when
    block = parse(text)
    # then
    assert block.options == {"meta-version": "1.3.0", "meta-product": "hub-demo", "meta-platform": "rpi4"}


def test_it_handles_escapes_and_hashes_inside_strings() -> None:
    # given
    text = r'meta-description="Quote \" backslash \\ tab\t # not a comment" # a comment' + "\n"
    # when
    block = parse(text)
    # then
    assert block.options["meta-description"] == 'Quote " backslash \\ tab\t # not a comment'


def test_it_handles_octal_and_hex_escapes_and_utf8() -> None:
    # when
    block = parse('a="\\101\\x42 é ☃"\n')
    # then
    assert block.options["a"] == "AB é ☃"


def test_it_skips_all_comment_styles() -> None:
    # given
    text = "# hash\n// slashes\n/* block\n over lines */ a=1 // trailing\nb=2 # trailing\n"
    # when
    block = parse(text)
    # then
    assert block.options == {"a": "1", "b": "2"}


def test_it_joins_continued_lines_inside_and_outside_strings() -> None:
    # given
    text = 'meta-description="first \\\nsecond"\nmeta-author = \\\n  "Someone"\n'
    # when
    block = parse(text)
    # then
    assert block.options["meta-description"] == "first second"
    assert block.options["meta-author"] == "Someone"


def test_it_keeps_newlines_inside_a_string_and_triple_quotes() -> None:
    # when
    block = parse('a="one\ntwo"\nb="""x "y" z"""\nc=\'single \\\' q\'\n')
    # then
    assert block.options == {"a": "one\ntwo", "b": 'x "y" z', "c": "single ' q"}


def test_it_parses_nested_sections_lists_and_functions() -> None:
    # given
    text = """
file-resource "rootfs.img" {
    length = {1024, 2048}
    blake2b-256 = "ab"
}
task upgrade {
    require-partition-offset(0, 1024)
    on-resource "rootfs.img" {
        funlist = {2,raw_write,524288}
    }
}
mbr mbr-a { partition 0 { block-offset = 63 } }
"""
    # when
    block = parse(text)
    # then
    [resource] = block.sections_of("file-resource")
    assert resource.title == "rootfs.img"
    assert resource.body.options == {"length": ["1024", "2048"], "blake2b-256": "ab"}
    [task] = block.sections_of("task")
    assert task.title == "upgrade"
    assert task.body.calls == [("require-partition-offset", ["0", "1024"])]
    [on_resource] = task.body.sections_of("on-resource")
    assert on_resource.body.options["funlist"] == ["2", "raw_write", "524288"]
    [mbr] = block.sections_of("mbr")
    assert mbr.body.sections_of("partition")[0].body.options == {"block-offset": "63"}


def test_it_appends_with_plus_equals_and_the_last_assignment_wins() -> None:
    # when
    block = parse("a={1}\na+=2\nb=x\nb=y\n")
    # then
    assert block.options == {"a": ["1", "2"], "b": "y"}


def test_it_keeps_unknown_keys_for_the_caller_to_ignore() -> None:
    # when
    block = parse("meta-creation-date=2020\nsome-future-key={a,b}\n")
    # then
    assert block.string("some-future-key") == "a,b"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('a="open\n', 1),
        ("a=1\nsec {\n b=2\n", 2),
        ("a=1\n}\n", 2),
        ("a=\n", 1),
        ("a={1,2\n", 1),
        ("/* never closed\n", 1),
        ("a 1 2\n", 1),
    ],
)
def test_it_reports_syntax_errors_with_a_line(text: str, line: int) -> None:
    # when
    with pytest.raises(MetaConfError) as error:
        parse(text)
    # then
    assert error.value.line == line
    assert f"line {line}" in str(error.value)
