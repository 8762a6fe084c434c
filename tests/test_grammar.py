"""JSON Schema → GBNF (rbee.grammar): each supported keyword, judged by llama.cpp's own grammar engine.

A converted grammar is loaded into llama.cpp's grammar sampler with the default model's vocabulary
and fed texts token by token (``Engine.grammar_matches``): what the schema allows must be accepted
whole, what it forbids refused. What the converter cannot turn into grammar is a SchemaError naming
the part.
"""

from __future__ import annotations

import json

import pytest

from rbee import grammar
from rbee.models import default_model_path
from rbee.worker.engine import Engine, EngineConfig


@pytest.fixture(scope="module")
def engine():
    e = Engine(EngineConfig(model_path=default_model_path(), slots=1, ctx_size=256, threads=1))
    e.load()  # no decode loop: grammar_matches runs on the caller's thread
    yield e
    e.close()


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}

CASES = [
    pytest.param({"type": "string"}, ['"bee"', '""', '"a \\"quoted\\" word\\n"', '"caf\u00e9"'],
                 ['bee', '"open', '"line\nbreak"', '1'], id="string"),
    pytest.param({"type": "integer"}, ["0", "-7", "120"], ["1.5", "01", "-0x1", '"1"'], id="integer"),
    pytest.param({"type": "number"}, ["0", "-2.5", "3e8", "1.25E-3"], [".5", "1.", "NaN"], id="number"),
    pytest.param({"type": "boolean"}, ["true", "false"], ["True", "1"], id="boolean"),
    pytest.param({"type": "null"}, ["null"], ["None", '""'], id="null"),
    pytest.param({"type": ["string", "null"]}, ['"x"', "null"], ["1"], id="type list"),
    pytest.param({"enum": ["red", "green", 3, None]}, ['"red"', "3", "null"], ['"blue"', "4", '"Red"'], id="enum"),
    pytest.param({"const": {"v": 1}}, ['{"v":1}'], ['{"v":2}', '{"v": 1}'], id="const"),
    pytest.param(PERSON, ['{"name": "Bo", "age": 42}', '{"name":"Bo","age":42}', '{\n  "name": "Bo",\n  "age": 4\n}'],
                 ['{"name": "Bo"}', '{"age": 42}', '{"name": "Bo", "age": 42, "x": 1}', '{"name": 1, "age": 2}'],
                 id="required"),
    pytest.param({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                                   "c": {"type": "integer"}}},
                 ["{}", '{"a": 1}', '{"b": 1, "c": 2}', '{"a": 1, "c": 3}', '{"a": 1, "b": 2, "c": 3}'],
                 ['{"a": 1,}', '{, "a": 1}', '{"d": 1}'], id="optional properties"),
    pytest.param({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                  "additionalProperties": {"type": "string"}},
                 ['{"id": 1}', '{"id": 1, "note": "x", "tag": "y"}'], ['{"id": 1, "note": 2}', '{"note": "x"}'],
                 id="additional properties"),
    pytest.param({"type": "object", "properties": {
        "owner": PERSON,
        "hive": {"type": "object", "properties": {"bees": {"type": "integer"}}, "required": ["bees"]}},
        "required": ["owner", "hive"]},
        ['{"owner": {"name": "Ann", "age": 40}, "hive": {"bees": 5000}}'],
        ['{"owner": {"name": "Ann"}, "hive": {"bees": 5000}}', '{"owner": {"name": "Ann", "age": 40}, "hive": {}}'],
        id="nested objects"),
    pytest.param({"type": "array", "items": {"type": "integer"}}, ["[]", "[1]", "[1, 2, 3]"], ['[1, "2"]', "[1,]"],
                 id="array"),
    pytest.param({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                 ['["a"]', '["a", "b"]'], ["[]", '["a", "b", "c"]'], id="array bounds"),
    pytest.param({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
                 ['["a", 1]'], ['["a"]', '[1, "a"]', '["a", 1, 2]'], id="tuple"),
    pytest.param({"type": "array", "items": PERSON}, ['[{"name": "A", "age": 1}, {"name": "B", "age": 2}]'],
                 ['[{"name": "A"}]'], id="array of objects"),
    pytest.param({"anyOf": [{"type": "integer"}, PERSON]}, ["5", '{"name": "A", "age": 1}'], ['"5"', "{}"],
                 id="anyOf"),
    pytest.param({"oneOf": [{"type": "boolean"}, {"type": "null"}]}, ["true", "null"], ["0"], id="oneOf"),
    pytest.param({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                                       "next": {"anyOf": [{"$ref": "#/$defs/node"},
                                                                                          {"type": "null"}]}},
                                      "required": ["v", "next"]}},
                  "$ref": "#/$defs/node"},
                 ['{"v": 1, "next": null}', '{"v": 1, "next": {"v": 2, "next": null}}'], ['{"v": 1}'],
                 id="recursive $ref"),
    pytest.param({"type": "integer", "minimum": -15, "maximum": 120}, ["-15", "-9", "0", "7", "99", "120"],
                 ["-16", "121", "-0", "1000"], id="integer range"),
    pytest.param({"type": "integer", "exclusiveMinimum": 99}, ["100", "12345"], ["99", "5", "-100"],
                 id="integer exclusive minimum"),
    pytest.param({"type": "string", "minLength": 2, "maxLength": 3}, ['"ab"', '"abc"'], ['"a"', '"abcd"'],
                 id="string length"),
    pytest.param({"type": "string", "format": "date-time"}, ['"2024-02-29T13:05:00Z"', '"2024-02-29T13:05:00+01:00"'],
                 ['"2024-02-29"', '"yesterday"'], id="date-time"),
    pytest.param({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"123"'],
                 id="uuid"),
    pytest.param({"title": "Anything", "description": "annotations constrain nothing"},
                 ['{"a": [1, null, "x"]}', "3", '"s"'], ["{a: 1}", "[1,]"], id="any value"),
]


@pytest.mark.parametrize(("schema", "accepted", "refused"), CASES)
def test_the_grammar_accepts_what_the_schema_allows_and_nothing_else(engine, schema, accepted, refused):
    gbnf = grammar.from_json_schema(schema)
    for text in accepted:
        assert engine.grammar_matches(gbnf, text), (text, gbnf)
        json.loads(text)  # (the fixture itself is JSON)
    for text in refused:
        assert not engine.grammar_matches(gbnf, text), (text, gbnf)


@pytest.mark.parametrize(("low", "high"), [(0, 9), (1, 10), (-3, 3), (-250, -17), (105, 250), (7, None), (None, -4),
                                           (0, 10**6), (999, 1001)])
def test_integer_ranges_are_exact_at_their_edges(engine, low, high):
    schema = {"type": "integer", **({} if low is None else {"minimum": low}),
              **({} if high is None else {"maximum": high})}
    gbnf = grammar.from_json_schema(schema)
    probes = {v for edge in (low, high) if edge is not None for v in (edge - 1, edge, edge + 1)} | {0, -1, 1, 10, -10}
    for v in sorted(probes):
        inside = (low is None or v >= low) and (high is None or v <= high)
        assert engine.grammar_matches(gbnf, str(v)) == inside, (v, low, high)


def test_json_object_mode_is_any_object(engine):
    gbnf = grammar.json_object()
    assert engine.grammar_matches(gbnf, '{"a": {"b": [1, 2]}}') and engine.grammar_matches(gbnf, "{}")
    assert not engine.grammar_matches(gbnf, "[1]") and not engine.grammar_matches(gbnf, '"x"')


def test_whitespace_is_bounded_so_a_model_cannot_run_off_into_blank_lines(engine):
    gbnf = grammar.from_json_schema(PERSON)
    assert not engine.grammar_matches(gbnf, '{\n\n\n"name": "Bo", "age": 1}')


@pytest.mark.parametrize(("schema", "where", "keyword"), [
    ({"type": "string", "pattern": "^a+$"}, "#", "pattern"),
    ({"type": "object", "properties": {"zip": {"type": "string", "pattern": "[0-9]{5}"}}}, "#/properties/zip",
     "pattern"),
    ({"type": "number", "minimum": 0}, "#", "minimum"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "#", "uniqueItems"),
    ({"type": "string", "format": "email"}, "#/format", "email"),
    ({"allOf": [{"type": "integer"}, {"type": "number"}]}, "#/allOf", "allOf"),
    ({"$ref": "https://example.com/schema.json"}, "#/$ref", "example.com"),
    ({"$ref": "#/$defs/missing"}, "#/$ref", "points at nothing"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"],
      "additionalProperties": False}, "#/required", "'b'"),
    ({"anyOf": [{"type": "integer"}], "minimum": 3}, "#", "minimum"),
    ({"type": "integer", "multipleOf": 2}, "#", "multipleOf"),
    ({"type": "strnig"}, "#/type", "strnig"),
])
def test_what_cannot_be_a_grammar_is_refused_naming_the_part(schema, where, keyword):
    with pytest.raises(grammar.SchemaError) as info:
        grammar.from_json_schema(schema)
    assert info.value.where == where and keyword in str(info.value), str(info.value)


def test_property_order_is_the_schemas_and_rule_names_are_valid():
    gbnf = grammar.from_json_schema({"type": "object", "properties": {"z": {"type": "string"},
                                                                      "a b/c": {"type": "integer"}},
                                     "required": ["z", "a b/c"]})
    assert gbnf.splitlines()[0].startswith("root ::=")
    assert gbnf.index('\\"z\\"') < gbnf.index('\\"a b/c\\"')
    for line in gbnf.splitlines():
        name = line.split(" ::= ")[0]
        assert name.replace("-", "").isalnum(), name


def test_literals_escape_what_gbnf_would_read_otherwise():
    assert grammar.literal('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\\te"'
