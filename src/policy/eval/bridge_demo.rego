# The embedded bridge demo policy (policy_ref "embedded:ros2-bridge-demo"): what `--bridge`
# uses without `--policy`.
# Bridged messages (kind tool.ros2.topic.publish): /cmd_vel and /cmd_vel/* allowed while
# |linear.x| <= 1.0 and |angular.z| <= 2.0; /disable_safety never; any other topic denied.
# Other kinds as the demo policy: tool.echo, tool.http_get (then the allowlist) and
# tool.ros2.launch allowed, tool.shell always denied, anything else denied.
package autonomy

# METADATA
# custom: {id: BRIDGE-DEMO-DEFAULT-DENY}
default allow := false

# METADATA
# custom: {id: BRIDGE-DEMO-ECHO}
allow if input.kind == "tool.echo"

# METADATA
# custom: {id: BRIDGE-DEMO-HTTP}
allow if input.kind == "tool.http_get"

# METADATA
# custom: {id: BRIDGE-DEMO-LAUNCH}
allow if input.kind == "tool.ros2.launch"

publish if input.kind == "tool.ros2.topic.publish"

topic := input.params.topic

cmd_vel if {
	publish
	topic == "/cmd_vel"
}

cmd_vel if {
	publish
	startswith(topic, "/cmd_vel/")
}

# Non-finite floats arrive as strings ("NaN", "Infinity"): not numbers, so never within limits.
within_limits if {
	m := input.params.message
	is_number(m.linear.x)
	is_number(m.angular.z)
	abs(m.linear.x) <= 1.0
	abs(m.angular.z) <= 2.0
}

# METADATA
# custom: {id: BRIDGE-DEMO-CMD-VEL}
allow if {
	cmd_vel
	within_limits
}

# METADATA
# custom: {id: BRIDGE-DEMO-SAFETY-TOPIC}
reason := "safety topics are never bridged" if {
	publish
	topic == "/disable_safety"
}

# METADATA
# custom: {id: BRIDGE-DEMO-CMD-VEL-LIMITS}
reason := sprintf("%s: |linear.x| must be <= 1.0 and |angular.z| <= 2.0", [topic]) if {
	cmd_vel
	not within_limits
}

# METADATA
# custom: {id: BRIDGE-DEMO-OTHER-TOPIC}
reason := sprintf("topic %s is not bridged by the demo policy", [topic]) if {
	publish
	not cmd_vel
	topic != "/disable_safety"
}

# METADATA
# custom: {id: BRIDGE-DEMO-SHELL}
reason := "tool.shell is always blocked by policy" if input.kind == "tool.shell"

# METADATA
# custom: {id: BRIDGE-DEMO-OTHER-KIND}
reason := sprintf("kind %q is not allowed by the demo policy", [input.kind]) if {
	not allow
	not publish
	input.kind != "tool.shell"
}
