# ROS 2 launch allowlist by package: tool.ros2.launch is allowed only for packages listed in
# data.ros.packages (ros/data.json, mounted at data.ros), and only for launch files that end
# in .launch.py / .launch.xml / .launch.yaml. Lives in its own package; the entry point in
# ../policy.rego imports it.
package ros

allowed_launch if {
	input.kind == "tool.ros2.launch"
	input.params.package in data.ros.packages
	valid_launch_file
}

valid_launch_file if {
	some suffix in [".launch.py", ".launch.xml", ".launch.yaml"]
	endswith(input.params.launch_file, suffix)
}
