"""Genotypes: parsing the DARTS form, JSON round trips, validation, published cells, diagrams."""

import shutil

import pytest

from fastnas.infra.errors import GenotypeError
from fastnas.space.genotype import PUBLISHED, Genotype, published

DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def test_published_set():
    assert set(PUBLISHED) == {"DARTS_V1", "DARTS_V2", "PDARTS", "PC_DARTS", "DRNAS"}
    for g in PUBLISHED.values():
        g.validate()
        assert len(g.normal) == len(g.reduce) == 8


def test_parse_darts_string_with_list_and_range():
    g = Genotype.parse(DARTS_V2_TEXT)
    assert g == PUBLISHED["DARTS_V2"]
    g2 = Genotype.parse(DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)"))
    assert g2 == g
    assert Genotype.parse("  " + DARTS_V2_TEXT.replace("Genotype(", "genotypes.Genotype(") + "\n") == g


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_round_trips(name, tmp_path):
    g = PUBLISHED[name]
    text = str(g)
    assert text.startswith("Genotype(normal=[('") and "normal_concat=range(2, 6)" in text
    assert Genotype.parse(text) == g
    assert Genotype.from_json(g.to_json()) == g
    path = tmp_path / "g.json"
    g.to_json(path)
    assert Genotype.from_json(path) == g
    assert Genotype.load(str(path)) == g
    assert Genotype.load(text) == g
    assert Genotype.load(name.lower()) == g


@pytest.mark.parametrize(
    "text, match",
    [
        (DARTS_V2_TEXT.replace("dil_conv_3x3", "dil_conv_9x9"), "unknown op 'dil_conv_9x9'"),
        (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "input 5 out of range"),
        (DARTS_V2_TEXT.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ", "", 1), "edges"),
        ("Genotype(normal=[('sep_conv_3x3', 0)]", "not a DARTS genotype string"),
        ("Genotype(normal=__import__('os').system('true'), reduce=[])", "only literals"),
        ("Foo(normal=[], reduce=[])", "expected Genotype"),
        ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)])", "missing field 'reduce'"),
        (DARTS_V2_TEXT.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 9]"), "reduce_concat"),
    ],
)
def test_parse_rejects(text, match):
    with pytest.raises(GenotypeError, match=match):
        Genotype.parse(text)


def test_json_rejects(tmp_path):
    with pytest.raises(GenotypeError, match="bad genotype JSON"):
        Genotype.from_json("{not json")
    with pytest.raises(GenotypeError, match="missing key 'reduce'"):
        Genotype.from_json('{"normal": []}')
    with pytest.raises(GenotypeError, match="not found"):
        Genotype.from_json(tmp_path / "missing.json")
    with pytest.raises(GenotypeError, match=r"edge 0: expected \(op, input\)"):
        Genotype.from_json('{"normal": [["sep_conv_3x3"]], "reduce": [["sep_conv_3x3"]]}')
    with pytest.raises(GenotypeError, match="unknown published genotype"):
        published("NASNET")
    with pytest.raises(GenotypeError, match="cannot read genotype"):
        Genotype.load("not-a-genotype")


def test_to_dot_and_render(tmp_path):
    g = PUBLISHED["PDARTS"]
    dot = g.to_dot("normal")
    assert dot.startswith('digraph "normal"')
    assert '"c_{k-2}" -> "0" [label="skip_connect"' in dot
    assert '"2" -> "c_{k}"' in dot  # node 4 (index 2 among intermediates) feeds the output
    assert dot.count("->") == 8 + 4
    written = g.render(tmp_path)
    names = {p.name for p in written}
    assert {"normal.dot", "reduce.dot"} <= names
    if shutil.which("dot"):
        assert {"normal.png", "reduce.png"} <= names
    with pytest.raises(ValueError):
        g.to_dot("other")
