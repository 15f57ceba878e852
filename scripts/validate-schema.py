#!/usr/bin/env python3
"""Validates YAML files against the macvtapd JSON schema (JSON Schema 2020-12).

Usage: validate-schema.py SCHEMA FILE...
Prints "valid FILE" or "invalid FILE: reason" per file; exits 0 when all are valid, 1 otherwise,
2 when the schema or the tools are unusable. Used by the Swift tests to check that the schema and
the loader agree.
"""
import json
import sys

try:
    import jsonschema
    import yaml
except ImportError as error:  # scripts/install-deps.sh installs both
    print(f"validate-schema: {error}", file=sys.stderr)
    sys.exit(2)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as handle:
        schema = json.load(handle)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    status = 0
    for path in sys.argv[2:]:
        try:
            with open(path, encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
            # Through JSON, as an editor's language server sees it (keys become strings).
            document = json.loads(json.dumps(document))
        except (yaml.YAMLError, UnicodeDecodeError, TypeError, ValueError) as error:
            print(f"invalid {path}: not loadable: {error}".replace("\n", " "))
            status = 1
            continue
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if errors:
            reasons = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
            print(f"invalid {path}: {reasons}")
            status = 1
        else:
            print(f"valid {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
