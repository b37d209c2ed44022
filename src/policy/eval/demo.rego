# The embedded demo policy (policy_ref "embedded:demo").
# tool.echo: allow. tool.http_get: allow here; the runtime then enforces the allowlist.
# tool.shell: always denied. tool.ros2.launch: allow. Anything else: deny.
package autonomy

# METADATA
# custom: {id: DEMO-DEFAULT-DENY}
default allow := false

# METADATA
# custom: {id: DEMO-ECHO}
allow if input.kind == "tool.echo"

# METADATA
# custom: {id: DEMO-HTTP}
allow if input.kind == "tool.http_get"

# METADATA
# custom: {id: DEMO-LAUNCH}
allow if input.kind == "tool.ros2.launch"

# METADATA
# custom: {id: DEMO-SHELL}
reason := "tool.shell is always blocked by policy" if input.kind == "tool.shell"

# METADATA
# custom: {id: DEMO-OTHER-KIND}
reason := sprintf("kind %q is not allowed by the demo policy", [input.kind]) if {
	not allow
	input.kind != "tool.shell"
}
