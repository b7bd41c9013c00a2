#!/usr/bin/env python3
"""JSON schemas for kubeconform, made offline (used by scripts/helm-check.sh).

  helm-check-schemas.py openapi SWAGGER_JSON OUT_DIR   core kinds from Kubernetes' OpenAPI v2 document
  helm-check-schemas.py crd OUT_DIR CRD_YAML...         custom kinds from CustomResourceDefinitions

Files are named as kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` template expects:
`deployment-apps-v1.json`, `service-v1.json`, `durablenamespace-stead-v1alpha1.json`. Schemas are
strict: an object with declared properties accepts no others (kubeconform -strict asks the same).
"""

import json
import os
import sys

import yaml


def file_name(group, version, kind):
    first = group.split(".")[0].lower()
    suffix = f"-{first}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def strict(node):
    """Forbids undeclared properties wherever properties are declared, recursively."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def openapi(swagger_path, out):
    with open(swagger_path) as f:
        definitions = json.load(f)["definitions"]
    # Types whose wire form is either a string or a number.
    for name, d in definitions.items():
        if name.endswith("util.intstr.IntOrString"):
            definitions[name] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        elif name.endswith("api.resource.Quantity"):
            definitions[name] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    definitions = strict(definitions)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "_definitions.json"), "w") as f:
        json.dump({"definitions": definitions}, f)
    count = 0
    for name, d in definitions.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            schema = {"$ref": f"_definitions.json#/definitions/{name}"}
            path = os.path.join(out, file_name(gvk["group"], gvk["version"], gvk["kind"]))
            # Several definitions may claim one kind (e.g. DeleteOptions): the first wins.
            if not os.path.exists(path):
                with open(path, "w") as f:
                    json.dump(schema, f)
                count += 1
    print(f"helm-check: {count} core kind schemas in {out}", file=sys.stderr)


def crd(out, paths):
    os.makedirs(out, exist_ok=True)
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                schema = json.loads(json.dumps(v["schema"]["openAPIV3Schema"]))
                props = schema.setdefault("properties", {})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                # ObjectMeta is validated by the API server, not by the CRD's schema.
                props["metadata"] = {"type": "object"}
                schema = strict(schema)
                name = file_name(spec["group"], v["name"], spec["names"]["kind"])
                with open(os.path.join(out, name), "w") as f:
                    json.dump(schema, f)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "openapi":
        openapi(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "crd":
        crd(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
