# The embedded demo policy (policy_ref "embedded:demo").
# tool.echo: allow. tool.http_get: allow here; the runtime then enforces the allowlist.
# tool.shell: always denied. tool.ros2.launch: allow. Anything else: deny.
package autonomy

default allow := false

allow if input.kind == "tool.echo"

allow if input.kind == "tool.http_get"

allow if input.kind == "tool.ros2.launch"

reason := "tool.shell is always blocked by policy" if input.kind == "tool.shell"

reason := sprintf("kind %q is not allowed by the demo policy", [input.kind]) if {
	not allow
	input.kind != "tool.shell"
}
