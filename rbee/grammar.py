"""JSON Schema → GBNF, the grammar llama.cpp's sampler constrains an answer to.

Pure Python, so every part can use it: the queen checks a schema (a 400 before anything is queued),
the worker converts it for the engine. Modelled on llama.cpp's ``json_schema_to_grammar.py`` with
one difference in spirit: a keyword that would constrain the answer and is not turned into grammar
is refused (:class:`SchemaError`, naming where it is) rather than skipped, so an answer made with a
grammar from here validates against its schema. Annotations (``title``, ``description``,
``default``, ...) constrain nothing and are ignored.

Supported: ``type`` (one or a list), ``enum``, ``const``, objects (``properties``, ``required``,
``additionalProperties``), arrays (``items``, ``prefixItems``, ``minItems``, ``maxItems``), strings
(``minLength``, ``maxLength``, ``format`` date / time / date-time / uuid), integers with
``minimum`` / ``maximum`` (exclusive too), ``anyOf`` / ``oneOf``, ``allOf`` of one schema, and
local ``$ref`` (``#/$defs/...``, recursion included).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

MAX_DEPTH = 48  # schemas nested deeper than this are refused (each level is a Python frame here)
MAX_GRAMMAR_CHARS = 256 * 1024

# Whitespace between tokens: a single space or one newline and a bounded indent, never a run of them,
# so a model cannot wander off into blank lines (llama.cpp's choice).
SPACE = r'| " " | "\n" [ \t]{0,20}'
CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
INTEGRAL = r'"0" | [1-9] [0-9]{0,15}'

# Rules other rules may refer to by name; added to a grammar only when used.
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "char": (CHAR, ()),
    "string": (r'"\"" char* "\"" space', ("char",)),
    "integral-part": (INTEGRAL, ()),
    "integer": (r'"-"? integral-part space', ("integral-part",)),
    "number": (r'"-"? integral-part ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,16})? space', ("integral-part",)),
    "boolean": (r'("true" | "false") space', ()),
    "null": (r'"null" space', ()),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": (r'"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
               ("string", "value")),
    "array": (r'"[" space ( value ("," space value)* )? "]" space', ("value",)),
    "date": (r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ((r'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
              r'( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )'), ()),
    "date-time": (r'date "T" time', ("date", "time")),
    "date-string": (r'"\"" date "\"" space', ("date",)),
    "time-string": (r'"\"" time "\"" space', ("time",)),
    "date-time-string": (r'"\"" date-time "\"" space', ("date-time",)),
    "uuid": ((r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
              r'[0-9a-fA-F]{12} "\"" space'), ()),
}
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
FORMATS = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

# Keywords that constrain nothing (JSON Schema's annotations, and pydantic's / OpenAPI's extras).
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs",
                         "definitions", "deprecated", "readOnly", "writeOnly", "discriminator", "contentMediaType",
                         "contentEncoding", "$anchor"})
_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
}
HANDLED = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}.union(*_BY_TYPE.values()))


class SchemaError(ValueError):
    """A schema (or part of one) this converter cannot turn into a grammar; ``where`` is its JSON pointer."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{problem} (at {where})")
        self.where = where
        self.problem = problem


def from_json_schema(schema: Any) -> str:
    """The GBNF grammar (root rule ``root``) whose sentences are exactly JSON texts valid under ``schema``
    (for the keywords supported). Raises :class:`SchemaError` naming the first part it cannot handle."""
    return _converted(json.dumps(schema))  # property order matters: it is the order of the answer


@functools.lru_cache(maxsize=64)
def _converted(canonical: str) -> str:
    # Keyed by the schema's text: a request's schema is checked where it arrives and converted where it runs.
    schema = json.loads(canonical)
    converter = _Converter(schema)
    expr = converter.visit(schema, "#", "root", 0)
    if expr != "root":
        converter.rules["root"] = expr
    return converter.grammar()


def json_object() -> str:
    """Any JSON object (OpenAI's ``response_format: json_object``)."""
    return from_json_schema({"type": "object"})


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_literal(value: Any) -> str:
    # Exactly the JSON text of the value (ensure_ascii=False: a model writes "é", not "\u00e9").
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + " space"


class _Converter:
    def __init__(self, document: Any) -> None:
        self.document = document
        self.rules: dict[str, str] = {"space": SPACE}
        self._refs: dict[str, str] = {}  # "$ref" pointer → the rule that matches it

    # ------------------------------------------------------------ output

    def grammar(self) -> str:
        rules = {"root": self.rules["root"], **self.rules}  # the start rule first, for whoever reads it
        text = "\n".join(f"{name} ::= {body}" for name, body in rules.items()) + "\n"
        if len(text) > MAX_GRAMMAR_CHARS:
            raise SchemaError("#", f"the schema makes a grammar of {len(text)} characters, over the limit of "
                              f"{MAX_GRAMMAR_CHARS}; simplify it")
        return text

    def _name(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-") or "r"
        name, i = base, 1
        while name in self.rules or name in PRIMITIVES:
            name, i = f"{base}-{i}", i + 1
        return name

    def _rule(self, hint: str, body: str) -> str:
        """A new rule holding ``body``; returns its name."""
        name = self._name(hint)
        self.rules[name] = body
        return name

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            body, deps = PRIMITIVES[name]
            self.rules[name] = body
            for dep in deps:
                self.primitive(dep)
        return name

    # ------------------------------------------------------------ schemas

    def visit(self, schema: Any, where: str, hint: str, depth: int) -> str:
        """A grammar expression matching the JSON texts ``schema`` accepts."""
        if depth > MAX_DEPTH:
            raise SchemaError(where, f"the schema is nested more than {MAX_DEPTH} levels deep")
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise SchemaError(where, "the schema 'false' accepts nothing")
        if not isinstance(schema, dict):
            raise SchemaError(where, f"a schema must be an object or a boolean, not {type(schema).__name__}")
        unknown = sorted(k for k in schema if k not in HANDLED and k not in ANNOTATIONS)
        if unknown:
            raise SchemaError(where, f"the keyword '{unknown[0]}' is not supported")
        if not schema.keys() - ANNOTATIONS:  # only annotations: any JSON value
            return self.primitive("value")
        if "$ref" in schema:
            self._alone(schema, where, "$ref")
            return self._ref(schema["$ref"], where, depth)
        for union in ("anyOf", "oneOf"):
            if union in schema:
                self._alone(schema, where, union)
                return self._union(schema[union], f"{where}/{union}", hint, depth)
        if "allOf" in schema:
            self._alone(schema, where, "allOf")
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError(f"{where}/allOf", "'allOf' is supported only with a single schema")
            return self.visit(parts[0], f"{where}/allOf/0", hint, depth + 1)
        if "const" in schema:
            return _json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}/enum", "'enum' must be a non-empty list")
            return "(" + " | ".join(_json_literal(v) for v in values) + ")"
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise SchemaError(f"{where}/type", "'type' must not be an empty list")
            return self._union([{**schema, "type": k} for k in kind], f"{where}/type", hint, depth)
        if kind is None:
            kind = self._implied_type(schema, where)
        if kind not in TYPES:
            raise SchemaError(f"{where}/type", f"the type {json.dumps(kind)} is not a JSON Schema type")
        stray = sorted(k for k in schema if any(k in keys for t, keys in _BY_TYPE.items() if t != kind)
                       and k not in _BY_TYPE.get(kind, ()))
        if stray:
            raise SchemaError(where, f"the keyword '{stray[0]}' does not apply to type '{kind}'")
        return getattr(self, f"_{kind}")(schema, where, hint, depth)

    @staticmethod
    def _alone(schema: dict, where: str, keyword: str) -> None:
        others = sorted(k for k in schema if k != keyword and k not in ANNOTATIONS)
        if others:
            raise SchemaError(where, f"'{keyword}' together with '{others[0]}' is not supported; "
                              f"move '{others[0]}' into each alternative")

    @staticmethod
    def _implied_type(schema: dict, where: str) -> str:
        kinds = [t for t, keys in _BY_TYPE.items() if keys & schema.keys()]
        if len(kinds) != 1:
            raise SchemaError(where, "the schema needs a 'type'")
        return kinds[0]

    def _union(self, alternatives: Any, where: str, hint: str, depth: int) -> str:
        if not isinstance(alternatives, list) or not alternatives:
            raise SchemaError(where, "a union needs a non-empty list of schemas")
        parts = [self.visit(alt, f"{where}/{i}", f"{hint}-{i}", depth + 1) for i, alt in enumerate(alternatives)]
        return "(" + " | ".join(parts) + ")"

    def _ref(self, ref: Any, where: str, depth: int) -> str:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"{where}/$ref", f"only references inside the schema ('#/...') are supported, "
                              f"not {json.dumps(ref)}")
        if ref in self._refs:
            return self._refs[ref]
        target: Any = self.document
        for raw in ref[2:].split("/") if ref != "#" else []:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise SchemaError(f"{where}/$ref", f"the reference {json.dumps(ref)} points at nothing")
        name = self._name("ref-" + ref[2:].split("/")[-1] if ref != "#" else "ref-root")
        self._refs[ref] = name
        self.rules[name] = ""  # reserved before visiting: a schema may refer to itself
        self.rules[name] = self.visit(target, ref, name, depth + 1)
        return name

    # ------------------------------------------------------------ one type each

    def _null(self, schema: dict, where: str, hint: str, depth: int) -> str:
        return self.primitive("null")

    def _boolean(self, schema: dict, where: str, hint: str, depth: int) -> str:
        return self.primitive("boolean")

    def _number(self, schema: dict, where: str, hint: str, depth: int) -> str:
        return self.primitive("number")

    def _integer(self, schema: dict, where: str, hint: str, depth: int) -> str:
        low, high = _int_bound(schema, where, "minimum", "exclusiveMinimum", 1), \
            _int_bound(schema, where, "maximum", "exclusiveMaximum", -1)
        if low is None and high is None:
            return self.primitive("integer")
        if low is not None and high is not None and low > high:
            raise SchemaError(where, f"no integer lies between {low} and {high}")
        return self._rule(hint, f"({int_range(low, high)}) space")

    def _string(self, schema: dict, where: str, hint: str, depth: int) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in FORMATS:
                raise SchemaError(f"{where}/format", f"the string format {json.dumps(fmt)} is not supported "
                                  f"(supported: {', '.join(FORMATS)})")
            if "minLength" in schema or "maxLength" in schema:
                raise SchemaError(where, "'format' together with a length bound is not supported")
            return self.primitive(FORMATS[fmt])
        low, high = _count(schema, where, "minLength"), _count(schema, where, "maxLength")
        if low is None and high is None:
            return self.primitive("string")
        self.primitive("char")
        return self._rule(hint, rf'"\"" {_repeat("char", low or 0, high)} "\"" space')

    def _array(self, schema: dict, where: str, hint: str, depth: int) -> str:
        low, high = _count(schema, where, "minItems") or 0, _count(schema, where, "maxItems")
        prefix, items = schema.get("prefixItems"), schema.get("items")
        if isinstance(items, list):  # draft-4 tuples: "items": [a, b]
            prefix, items = items, schema.get("additionalItems", False)
        if prefix is not None:
            if not isinstance(prefix, list):
                raise SchemaError(f"{where}/prefixItems", "'prefixItems' must be a list of schemas")
            if items not in (None, False):
                raise SchemaError(f"{where}/items", "'items' after 'prefixItems' is supported only as false")
            if low > len(prefix) or (high is not None and high < len(prefix)):
                raise SchemaError(where, "item bounds that cut a tuple short are not supported")
            parts = [self.visit(s, f"{where}/prefixItems/{i}", f"{hint}-{i}", depth + 1) for i, s in enumerate(prefix)]
            return self._rule(hint, '"[" space ' + ' "," space '.join(parts) + ' "]" space')
        item = self.visit(True if items is None else items, f"{where}/items", f"{hint}-item", depth + 1)
        if high is not None and high < low:
            raise SchemaError(where, f"'maxItems' {high} is less than 'minItems' {low}")
        return self._rule(hint, '"[" space ' + _separated(item, low, high) + ' "]" space')

    def _object(self, schema: dict, where: str, hint: str, depth: int) -> str:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError(f"{where}/properties", "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{where}/required", "'required' must be a list of property names")
        missing = [r for r in required if r not in properties]
        extra = schema.get("additionalProperties", None if properties else True)
        if missing and extra in (None, False):
            raise SchemaError(f"{where}/required", f"'{missing[0]}' is required but has no schema in 'properties'")
        if not properties and extra in (True, None):
            return self.primitive("object")
        pairs: dict[str, str] = {}
        for key, sub in properties.items():
            value = self.visit(sub, f"{where}/properties/{_pointer(key)}", f"{hint}-{key}", depth + 1)
            pairs[key] = self._rule(f"{hint}-{key}-kv", f'{_json_literal(key)} ":" space {value}')
        must = [pairs[k] for k in properties if k in required]
        may = [pairs[k] for k in properties if k not in required]
        if extra not in (None, False):
            # Any other key (a known name may come again, as llama.cpp allows: the JSON stays valid).
            value = self.visit(extra, f"{where}/additionalProperties", f"{hint}-additional", depth + 1)
            kv = self._rule(f"{hint}-additional-kv", f'{self.primitive("string")} ":" space {value}')
            may.append(self._rule(f"{hint}-additional-kvs", f'{kv} ( "," space {kv} )*'))
        return self._rule(hint, '"{" space ' + self._members(must, may, hint) + ' "}" space')

    def _members(self, must: list[str], may: list[str], hint: str) -> str:
        """The required pairs in order, then any in-order subset of the optional ones, comma-separated."""
        body = ' "," space '.join(must)
        if not may:
            return body
        # from[i]: a non-empty in-order subset of may[i:]; it starts with may[i] or skips it.
        after = ""
        for i in range(len(may) - 1, -1, -1):
            starting = f'{may[i]} ( "," space {after} )?' if after else may[i]
            after = self._rule(f"{hint}-from-{i}", starting if not after else f"{starting} | {after}")
        if must:
            return f'{body} ( "," space {after} )?'
        return f"{after}?"


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _count(schema: dict, where: str, keyword: str) -> int | None:
    value = schema.get(keyword)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{where}/{keyword}", f"'{keyword}' must be a non-negative integer")
    return value


def _int_bound(schema: dict, where: str, inclusive: str, exclusive: str, step: int) -> int | None:
    """The inclusive integer bound the keywords give (``step`` moves an exclusive one inwards)."""
    bounds = []
    for keyword, shift in ((inclusive, 0), (exclusive, step)):
        value = schema.get(keyword)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{where}/{keyword}", f"'{keyword}' must be a number")
        if isinstance(value, float) and not value.is_integer():
            raise SchemaError(f"{where}/{keyword}", f"a fractional '{keyword}' on an integer is not supported")
        bounds.append(int(value) + shift)
    if not bounds:
        return None
    return max(bounds) if step > 0 else min(bounds)


def _repeat(item: str, low: int, high: int | None) -> str:
    if high is None:
        return f"{item}{{{low},}}"
    return f"{item}{{{low},{high}}}"


def _separated(item: str, low: int, high: int | None) -> str:
    """``low`` to ``high`` (None: any number) of ``item``, comma-separated."""
    if high == 0:
        return ""
    more = f'( "," space {item} )'
    if low == 0:
        return f"( {item} {_repeat(more, 0, None if high is None else high - 1)} )?"
    return f"{item} {_repeat(more, low - 1, None if high is None else high - 1)}"


# ---------------------------------------------------------------- integer ranges


def int_range(low: int | None, high: int | None) -> str:
    """A GBNF expression for the canonical decimal integers from ``low`` to ``high`` (None: unbounded)."""
    alternatives: list[str] = []
    if low is None or low < 0:  # the negative part, as "-" and the mirrored positive range
        neg_high = None if low is None else -low  # |most negative|
        neg_low = 1 if high is None or high >= 0 else -high
        alternatives.append(f'"-" ({_natural_range(neg_low, neg_high)})')
    if high is None or high >= 0:
        alternatives.append(_natural_range(max(low or 0, 0), high))
    return " | ".join(alternatives)


def _natural_range(low: int, high: int | None) -> str:
    """Naturals from ``low`` to ``high`` (None: unbounded), without leading zeros: one group per width."""
    width = len(str(low))
    if high is None:
        parts = [_same_width(str(low), "9" * width)]
        if width < 16:
            parts.append(f"[1-9] [0-9]{{{width},15}}")  # every longer number
    else:
        parts = [_same_width(str(max(low, 10 ** (w - 1) if w > 1 else 0)), str(min(high, 10**w - 1)))
                 for w in range(width, len(str(high)) + 1)]
    return " | ".join(f"( {p} )" for p in parts)


def _digits(lo: int, hi: int) -> str:
    return f'"{lo}"' if lo == hi else f"[{lo}-{hi}]"


def _same_width(lo: str, hi: str) -> str:
    """Digit strings of one width from ``lo`` to ``hi`` (lo <= hi)."""
    if not lo:
        return ""
    if lo == hi:
        return " ".join(f'"{c}"' for c in lo)
    first_lo, first_hi, n = int(lo[0]), int(hi[0]), len(lo) - 1
    if first_lo == first_hi:
        return f'"{lo[0]}" ( {_same_width(lo[1:], hi[1:])} )'
    if lo[1:] == "0" * n and hi[1:] == "9" * n:
        return _digits(first_lo, first_hi) + (f" [0-9]{{{n}}}" if n else "")
    out = []
    out.append(f'"{lo[0]}" ( {_same_width(lo[1:], "9" * n)} )' if n else f'"{lo[0]}"')
    if first_hi - first_lo > 1:
        out.append(_digits(first_lo + 1, first_hi - 1) + (f" [0-9]{{{n}}}" if n else ""))
    out.append(f'"{hi[0]}" ( {_same_width("0" * n, hi[1:])} )' if n else f'"{hi[0]}"')
    return " | ".join(f"( {p} )" for p in out)
