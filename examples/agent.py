#!/usr/bin/env python3
"""A standard-library agent that calls the autonomy runtime and checks the demo policy.

Run it governed:   autonomy run python3 examples/agent.py
Or against a daemon: AUTONOMY_RUNTIME_URL=http://127.0.0.1:7777 python3 examples/agent.py

When AUTONOMY_RUNTIME_TOKEN is set (`autonomy run` sets a one-run token; a daemon with --auth
takes one from `autonomy agent add NAME`), it is sent as `Authorization: Bearer <token>`.

It prints each answer and exits 1 if any answer differs from the embedded demo policy's table.
"""

import json
import os
import sys
import urllib.error
import urllib.request


def call_tool(kind: str, params: dict) -> tuple[int, dict]:
    base_url = os.environ["AUTONOMY_RUNTIME_URL"].rstrip("/")
    payload = json.dumps({"kind": kind, "params": params}).encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("AUTONOMY_RUNTIME_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{base_url}/v1/tool",
        data=payload,
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# (kind, params, expected status, expected decision, check on the body)
CASES = [
    ("tool.echo", {"message": "hello"}, 200, "allow", lambda b: b.get("output") == "hello"),
    ("tool.shell", {"command": "rm -rf /"}, 403, "deny",
     lambda b: "always blocked by policy" in b.get("reason", "") and "output" not in b),
    ("tool.launch_missiles", {}, 403, "deny", lambda b: bool(b.get("reason")) and "output" not in b),
    # Not in any allowlist (and `autonomy run` has an empty one): fail-closed.
    ("tool.http_get", {"endpoint": "https://example.com/"}, 403, "deny",
     lambda b: bool(b.get("reason")) and "output" not in b),
]


def main() -> int:
    if "AUTONOMY_RUNTIME_URL" not in os.environ:
        print("AUTONOMY_RUNTIME_URL is not set: run me with `autonomy run python3 examples/agent.py`",
              file=sys.stderr)
        return 2
    failures = 0
    for kind, params, want_status, want_decision, check in CASES:
        try:
            status, body = call_tool(kind, params)
        except (OSError, ValueError) as exc:
            print(f"FAIL {kind}: cannot reach the runtime: {exc}")
            failures += 1
            continue
        ok = (
            status == want_status
            and body.get("decision") == want_decision
            and bool(body.get("audit_id"))
            and bool(body.get("policy_ref"))
            and check(body)
        )
        print(f"{'ok  ' if ok else 'FAIL'} {kind}: {status} {json.dumps(body, sort_keys=True)}")
        if not ok:
            failures += 1
    print(f"{len(CASES) - failures} of {len(CASES)} answers match the demo policy")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
