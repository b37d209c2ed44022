# Entry point: package autonomy, rule allow (default false) and reason.
package autonomy

import data.ros

# METADATA
# custom: {id: LAUNCH-DEFAULT-DENY}
default allow := false

# METADATA
# custom: {id: LAUNCH-ALLOWLIST}
allow if ros.allowed_launch

# METADATA
# custom: {id: LAUNCH-ECHO}
allow if input.kind == "tool.echo"

# METADATA
# custom: {id: LAUNCH-UNKNOWN-PACKAGE}
reason := sprintf("ROS package %q is not in the launch allowlist", [input.params.package]) if {
	input.kind == "tool.ros2.launch"
	not input.params.package in data.ros.packages
}

# METADATA
# custom: {id: LAUNCH-BAD-FILE}
reason := sprintf("launch file %q is not a .launch.py/.xml/.yaml file", [input.params.launch_file]) if {
	input.kind == "tool.ros2.launch"
	input.params.package in data.ros.packages
	not ros.valid_launch_file
}

# METADATA
# custom: {id: LAUNCH-OTHER-KIND}
reason := sprintf("kind %q is not allowed by this policy", [input.kind]) if {
	not input.kind in {"tool.echo", "tool.ros2.launch"}
}
