#!/usr/bin/env python3
"""Validates JSON documents against a JSON Schema (draft 2020-12), for the keywords dsm's schemas use:
type, properties, required, additionalProperties, items, enum, const, minimum, maximum, minItems,
oneOf, anyOf, $ref to "#/$defs/NAME". Any other keyword is refused rather than ignored, so that a schema
never seems to check more than it does. No dependencies.

usage: json_schema_check.py SCHEMA.json DOCUMENT.json...   (exit 0: all valid; 1: not; 2: bad usage)"""
import json
import sys

ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "$defs"}
KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum",
            "maximum", "minItems", "oneOf", "anyOf", "$ref"}


def type_ok(value, name):
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and value.is_integer())
    raise ValueError("unknown type " + name)


def same(a, b):
    # JSON equality: 1 == 1.0, but true is not 1
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


class Validator:
    def __init__(self, schema):
        self.root = schema

    def resolve(self, ref):
        if not ref.startswith("#/$defs/"):
            raise ValueError("unsupported $ref " + ref)
        return self.root["$defs"][ref[len("#/$defs/"):]]

    def errors(self, value, schema, path):
        unknown = set(schema) - KEYWORDS - ANNOTATIONS
        if unknown:
            raise ValueError("schema keyword(s) not supported here: %s (at %s)" % (sorted(unknown), path))
        out = []
        if "$ref" in schema:
            out += self.errors(value, self.resolve(schema["$ref"]), path)
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(type_ok(value, n) for n in names):
                return out + ["%s: %s is not of type %s" % (path, json.dumps(value)[:60], "/".join(names))]
        if "const" in schema and not same(value, schema["const"]):
            out.append("%s: %s is not %s" % (path, json.dumps(value)[:60], json.dumps(schema["const"])))
        if "enum" in schema and not any(same(value, e) for e in schema["enum"]):
            out.append("%s: %s is not one of %s" % (path, json.dumps(value)[:60], json.dumps(schema["enum"])))
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if "minimum" in schema and is_number and value < schema["minimum"]:
            out.append("%s: %s < minimum %s" % (path, value, schema["minimum"]))
        if "maximum" in schema and is_number and value > schema["maximum"]:
            out.append("%s: %s > maximum %s" % (path, value, schema["maximum"]))
        if isinstance(value, dict):
            props = schema.get("properties", {})
            for key in schema.get("required", []):
                if key not in value:
                    out.append("%s: missing required member '%s'" % (path, key))
            for key, item in value.items():
                if key in props:
                    out += self.errors(item, props[key], path + "." + key)
                elif schema.get("additionalProperties") is False:
                    out.append("%s: member '%s' is not allowed" % (path, key))
                elif isinstance(schema.get("additionalProperties"), dict):
                    out += self.errors(item, schema["additionalProperties"], path + "." + key)
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                out.append("%s: fewer than %d items" % (path, schema["minItems"]))
            if "items" in schema:
                for i, item in enumerate(value):
                    out += self.errors(item, schema["items"], "%s[%d]" % (path, i))
        for key in ("oneOf", "anyOf"):
            if key in schema:
                passing = sum(1 for s in schema[key] if not self.errors(value, s, path))
                if (key == "oneOf" and passing != 1) or (key == "anyOf" and passing == 0):
                    out.append("%s: %d of the %s alternatives match %s" % (path, passing, key,
                                                                         json.dumps(value)[:60]))
        return out


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        validator = Validator(json.load(f))
    status = 0
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        errs = validator.errors(doc, validator.root, "$")
        if errs:
            status = 1
            print("%s: %d error(s)" % (path, len(errs)))
            for e in errs[:20]:
                print("  " + e)
        else:
            print("%s: valid" % path)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
