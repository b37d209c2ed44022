"""A node that ignores SIGINT and SIGTERM (writes its pid and process group to `pidfile`)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('pidfile'),
        Node(package='autonomy_test_nodes', executable='test_node.py', name='stubborn',
             arguments=['stubborn', LaunchConfiguration('pidfile')], output='screen'),
    ])
