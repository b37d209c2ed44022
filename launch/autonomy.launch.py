"""Starts the autonomy runtime with its ROS 2 node (/autonomy) as part of a ROS 2 launch.

    ros2 launch ./launch/autonomy.launch.py demo:=true
    ros2 launch ./launch/autonomy.launch.py policy:=/etc/autonomy/policy wal_dir:=/var/lib/autonomy/wal

Launch arguments: listen (host:port of the HTTP API), policy (a .rego file or directory;
empty = deny-all unless demo), wal_dir (empty = the default), demo (true: the embedded demo
policy), autonomy (the binary). ROS_DOMAIN_ID and RMW_IMPLEMENTATION are inherited.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _runtime(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    cmd = [arg('autonomy') or 'autonomy', 'runtime', 'start', '--ros', '--listen', arg('listen')]
    if arg('demo').lower() in ('true', '1', 'yes'):
        cmd.append('--demo')
    elif arg('policy'):
        cmd += ['--policy', arg('policy')]
    if arg('wal_dir'):
        cmd += ['--wal-dir', arg('wal_dir')]
    return [
        ExecuteProcess(
            cmd=cmd,
            name='autonomy',
            output='screen',
            # The runtime finishes in-flight calls and closes its WAL on SIGINT.
            sigterm_timeout='10',
        )
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('listen', default_value='127.0.0.1:7777',
                              description='Address of the HTTP API (host:port)'),
        DeclareLaunchArgument('policy', default_value='',
                              description='Policy: a .rego file or a directory of them (empty: deny-all)'),
        DeclareLaunchArgument('wal_dir', default_value='',
                              description='WAL directory (empty: $XDG_STATE_HOME/autonomy/wal)'),
        DeclareLaunchArgument('demo', default_value='false',
                              description='true: use the embedded demo policy'),
        DeclareLaunchArgument('autonomy', default_value='autonomy',
                              description='Path of the autonomy binary'),
        OpaqueFunction(function=_runtime),
    ])
