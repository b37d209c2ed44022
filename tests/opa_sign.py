#!/usr/bin/env python3
"""Builds a signed bundle the way `opa build -b DIR --signing-key KEY --signing-alg ALG` does,
without any of autonomy's code: the interop check for signed bundles
(tests/integration/policy/signing.rs).

What `opa build` writes, and what is copied here (OPA's bundle/bundle.go, hash.go, sign.go):
- a gzip'd tar whose entries are root-relative: `/data.json` (every data.json under DIR merged
  at its directory's path), the `.rego` files, `/.manifest`, `/.signatures.json`;
- `.signatures.json` = `{"signatures": [JWT]}`, the JWT (PyJWT here; lestrrat-go/jwx in OPA)
  signed with ALG, header `{"alg", "kid"?}` (no `typ`), payload
  `{"files": [{"name", "hash", "algorithm": "SHA-256"}], "keyid"?, "scope"?}` with names without
  the leading `/`;
- a `.rego` file's hash is SHA-256 over its bytes; `data.json` and `.manifest` are hashed over
  Go's canonical form: keys sorted, no spaces, strings as Go's encoding/json writes them with
  HTML escaping off, numbers exactly as written (json.Number).

The data.json written is pretty-printed with keys in file order, so its bytes differ from the
canonical form that was hashed: a verifier has to canonicalise as OPA does.

usage: opa_sign.py --dir DIR --key KEY.pem --alg ALG --out OUT.tar.gz [--kid ID] [--scope S]
                   [--revision R]
"""

import argparse
import hashlib
import io
import json
import os
import tarfile

import jwt


class Number(str):
    """A JSON number, kept as its literal (Go's json.Number)."""


def load_json(raw):
    return json.loads(
        raw,
        parse_int=Number,
        parse_float=Number,
        parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)),
    )


def go_string(s):
    """A string as Go's encoding/json encodes it with SetEscapeHTML(false) (Go >= 1.22)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20:
            out.append("\\u%04x" % o)
        elif o in (0x2028, 0x2029):
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def canonical(v):
    """OPA's hash input for a structured document (bundle/hash.go `walk`)."""
    if isinstance(v, dict):
        return "{" + ",".join(go_string(k) + ":" + canonical(v[k]) for k in sorted(v, key=lambda k: k.encode())) + "}"
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    if isinstance(v, Number):
        return str(v)
    if isinstance(v, str):
        return go_string(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    raise TypeError(type(v))


def pretty(v, indent=0):
    """Indented JSON with the keys in their own order and numbers as written."""
    pad = "  " * (indent + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [pad + json.dumps(k) + ": " + pretty(x, indent + 1) for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        return "[\n" + ",\n".join(pad + pretty(x, indent + 1) for x in v) + "\n" + "  " * indent + "]"
    if isinstance(v, Number):
        return str(v)
    return json.dumps(v, ensure_ascii=True)


def merge_at(root, path, value):
    node = root
    for part in path:
        node = node.setdefault(part, {})
    for k, x in value.items():
        node[k] = x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--alg", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kid")
    ap.add_argument("--scope")
    ap.add_argument("--revision", default="")
    a = ap.parse_args()

    modules = {}
    data = {}
    for dirpath, _, names in os.walk(a.dir):
        for n in sorted(names):
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, a.dir).replace(os.sep, "/")
            if n.endswith(".rego"):
                with open(full, "rb") as f:
                    modules[rel] = f.read()
            elif n == "data.json":
                with open(full, "rb") as f:
                    value = load_json(f.read())
                d = os.path.dirname(rel)
                merge_at(data, [p for p in d.split("/") if p], value)

    manifest = {"revision": a.revision, "roots": [""], "rego_version": Number("1")}
    files = []
    for rel, content in sorted(modules.items()):
        files.append({"name": rel, "hash": hashlib.sha256(content).hexdigest(), "algorithm": "SHA-256"})
    for rel, value in (("data.json", data), (".manifest", manifest)):
        digest = hashlib.sha256(canonical(value).encode()).hexdigest()
        files.append({"name": rel, "hash": digest, "algorithm": "SHA-256"})

    payload = {"files": files}
    if a.kid:
        payload["keyid"] = a.kid
    if a.scope:
        payload["scope"] = a.scope
    headers = {"typ": None}
    if a.kid:
        headers["kid"] = a.kid
    with open(a.key, "rb") as f:
        key = f.read()
    token = jwt.encode(payload, key, algorithm=a.alg, headers=headers)

    entries = [("/data.json", pretty(data).encode())]
    entries += [("/" + rel, content) for rel, content in sorted(modules.items())]
    entries.append(("/.signatures.json", json.dumps({"signatures": [token]}, indent=1).encode()))
    entries.append(("/.manifest", pretty(manifest).encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, content in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            ti.mode = 0o644
            tar.addfile(ti, io.BytesIO(content))
    with open(a.out, "wb") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    main()
