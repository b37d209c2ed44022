"""A node that calls the autonomy runtime (and stays up until `hold` exists), and one that dies
with exit code `crash_code`."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('hold', default_value=''),
        DeclareLaunchArgument('crash_code', default_value='3'),
        Node(package='autonomy_test_nodes', executable='test_node.py', name='caller',
             arguments=['call', LaunchConfiguration('hold')], output='screen'),
        Node(package='autonomy_test_nodes', executable='test_node.py', name='crasher',
             arguments=['crash', LaunchConfiguration('crash_code')], output='screen'),
    ])
