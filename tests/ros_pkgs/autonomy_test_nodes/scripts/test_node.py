#!/usr/bin/env python3
"""A real rclpy node for autonomy's real-ROS tests, started by `ros2 launch`.

    test_node.py call HOLD_FILE   POST tool.echo to $AUTONOMY_RUNTIME_URL, print the audit id,
                                  then stay up until HOLD_FILE exists (60 s at most; '' = no wait)
    test_node.py crash CODE       exit with CODE after a moment
    test_node.py stubborn PIDFILE ignore SIGINT and SIGTERM, write {"pid", "pgid"} to PIDFILE,
                                  run until killed
"""

import json
import os
import signal
import sys
import time
import urllib.request

import rclpy


def call(node, hold):
    url = os.environ['AUTONOMY_RUNTIME_URL'] + '/v1/tool'
    body = json.dumps({'kind': 'tool.echo',
                       'params': {'message': 'from a launched rclpy node'}}).encode()
    req = urllib.request.Request(url, data=body, headers={'Content-Type': 'application/json'})
    answer = json.loads(urllib.request.urlopen(req, timeout=10).read())
    print(f"caller got {answer['audit_id']}", flush=True)
    deadline = time.monotonic() + 60
    while hold and not os.path.exists(hold) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)


def stubborn(pidfile):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pidfile + '.tmp', 'w') as f:
        json.dump({'pid': os.getpid(), 'pgid': os.getpgrp()}, f)
    os.replace(pidfile + '.tmp', pidfile)
    while True:
        time.sleep(0.1)


def main():
    mode, arg = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ''
    if mode == 'stubborn':
        stubborn(arg)
    rclpy.init(args=sys.argv)
    node = rclpy.create_node('test_' + mode)
    try:
        if mode == 'call':
            call(node, arg)
        elif mode == 'crash':
            time.sleep(0.3)
            sys.exit(int(arg))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
