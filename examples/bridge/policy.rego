# Example policy for the topic bridge (`--bridge examples/bridge/bridge.toml --policy
# examples/bridge/policy.rego`).
# /cmd_vel: at most 20 messages per second (`input.rate`: the topic's messages in the last
# second, this one included); a command faster than |linear.x| <= 1.0, |angular.z| <= 2.0 is
# not denied but clamped to those limits (a downgrade: `patch`, see docs/policy.md), and the
# robot gets the clamped command; the decision record holds both.
# /disable_safety: never. Any other topic: denied. tool.echo and tool.ros2.launch: allowed
# (so `autonomy run --bridge … ros2.launch …` can start the stack); anything else denied.
package autonomy

# METADATA
# custom: {id: BRIDGE-DEFAULT-DENY}
default allow := false

max_rate := 20

# METADATA
# custom: {id: BRIDGE-ECHO}
allow if input.kind == "tool.echo"

# METADATA
# custom: {id: BRIDGE-LAUNCH}
allow if input.kind == "tool.ros2.launch"

publish if input.kind == "tool.ros2.topic.publish"

cmd_vel if {
	publish
	input.params.topic == "/cmd_vel"
}

within_limits if {
	m := input.params.message
	is_number(m.linear.x)
	is_number(m.angular.z)
	abs(m.linear.x) <= 1.0
	abs(m.angular.z) <= 2.0
}

within_rate if input.rate <= max_rate

# METADATA
# custom: {id: BRIDGE-CMD-VEL}
allow if {
	cmd_vel
	within_limits
	within_rate
}

clamp(v, limit) := max([0 - limit, min([v, limit])])

# Over the limits, but otherwise fine: the same command, clamped. The patched message is within
# the limits, so the policy allows it as it is, which is what makes this a downgrade.

# METADATA
# custom: {id: BRIDGE-CMD-VEL-CLAMP}
patch := {
	"linear": {"x": clamp(m.linear.x, 1.0)},
	"angular": {"z": clamp(m.angular.z, 2.0)},
} if {
	cmd_vel
	within_rate
	m := input.params.message
	is_number(m.linear.x)
	is_number(m.angular.z)
	not within_limits
}

# METADATA
# custom: {id: BRIDGE-CMD-VEL-RATE}
reason := sprintf("/cmd_vel: %v messages in the last second, at most %v", [input.rate, max_rate]) if {
	cmd_vel
	not within_rate
}

# Said only when the command cannot be clamped (a speed that is not a number).

# METADATA
# custom: {id: BRIDGE-CMD-VEL-LIMITS}
reason := "/cmd_vel: |linear.x| must be <= 1.0 and |angular.z| <= 2.0" if {
	cmd_vel
	within_rate
	not within_limits
}

# METADATA
# custom: {id: BRIDGE-SAFETY-TOPIC}
reason := "safety topics are never bridged" if {
	publish
	input.params.topic == "/disable_safety"
}

# METADATA
# custom: {id: BRIDGE-OTHER-TOPIC}
reason := sprintf("topic %s is not bridged", [input.params.topic]) if {
	publish
	not cmd_vel
	input.params.topic != "/disable_safety"
}

# METADATA
# custom: {id: BRIDGE-OTHER-KIND}
reason := sprintf("kind %q is not allowed", [input.kind]) if {
	not publish
	not allow
}
