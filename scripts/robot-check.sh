#!/usr/bin/env bash
# Checks autonomy's ROS 2 node against the ROS 2 on this machine, one PASS/FAIL line per check.
#
#   scripts/robot-check.sh [PACKAGE LAUNCH_FILE [LAUNCH ARGS...]]
#
# Run it where the robot's ROS 2 is sourced (or ROS_DISTRO is set and /opt/ros/$ROS_DISTRO
# exists), with the robot's ROS_DOMAIN_ID and RMW_IMPLEMENTATION, and autonomy_msgs built and
# sourced. It starts its own `autonomy runtime start --demo --ros` on a free loopback port with
# a temporary WAL. With PACKAGE and LAUNCH_FILE it also runs `autonomy run ros2.launch` on them
# (stopped with Ctrl-C after ROBOT_CHECK_LAUNCH_SECS, default 10) while `ros2 topic echo`
# watches /autonomy/markers.
#
# Environment: AUTONOMY (the binary, default `autonomy` on PATH), ROBOT_CHECK_TIMEOUT (seconds
# per ros2 command, default 30), ROBOT_CHECK_LAUNCH_SECS.
# Exit code: 0 when every check passed, 1 otherwise, 2 on a usage error.
set -uo pipefail

AUTONOMY=${AUTONOMY:-autonomy}
T=${ROBOT_CHECK_TIMEOUT:-30}
LAUNCH_SECS=${ROBOT_CHECK_LAUNCH_SECS:-10}
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ $# -eq 1 ]; then
  echo "usage: $0 [PACKAGE LAUNCH_FILE [LAUNCH ARGS...]]" >&2
  exit 2
fi

passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/robot-check.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill -INT "$p" 2>/dev/null
  done
  sleep 1
  for p in "${pids[@]}"; do
    kill -KILL "-$p" 2>/dev/null
    kill -KILL "$p" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Everything a ros2 command printed on stderr, to look for warnings about our endpoints.
cli_err=$tmp/cli.err
: >"$cli_err"
r2() { timeout "$T" ros2 "$@" 2>>"$cli_err"; }

# --- the ROS 2 environment
if ! command -v ros2 >/dev/null && [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then
  # shellcheck disable=SC1090
  source "/opt/ros/$ROS_DISTRO/setup.bash"
fi
if command -v ros2 >/dev/null; then
  pass "ros2-cli ($(command -v ros2), ROS_DISTRO=${ROS_DISTRO:-unset}, RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-default}, ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0})"
else
  fail ros2-cli "ros2 is not on PATH: source your ROS 2 setup file first"
  echo "robot-check: $passed passed, $failed failed"
  exit 1
fi
if ! command -v "$AUTONOMY" >/dev/null; then
  fail autonomy "$AUTONOMY not found: put it on PATH or set AUTONOMY=/path/to/autonomy"
  echo "robot-check: $passed passed, $failed failed"
  exit 1
fi
if r2 interface show autonomy_msgs/srv/Tool >/dev/null; then
  pass "autonomy-msgs (autonomy_msgs/srv/Tool is known)"
else
  fail autonomy-msgs "build and source ros_msgs/autonomy_msgs (colcon build --packages-select autonomy_msgs)"
fi

# --- the runtime with its ROS node
wal=$tmp/wal
setsid "$AUTONOMY" runtime start --demo --ros --listen 127.0.0.1:0 --wal-dir "$wal" \
  </dev/null >"$tmp/runtime.out" 2>"$tmp/runtime.err" &
runtime_pid=$!
pids+=("$runtime_pid")
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$tmp/runtime.err" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -n "$url" ]; then
  pass "runtime-start ($(grep -o 'ROS 2 node .*' "$tmp/runtime.err" | head -1))"
else
  fail runtime-start "no start line: $(tr '\n' ' ' <"$tmp/runtime.err")"
  echo "robot-check: $passed passed, $failed failed"
  exit 1
fi
grep -q "warning: ROS_DISTRO" "$tmp/runtime.err" &&
  fail distro "$(grep -o 'warning: ROS_DISTRO.*' "$tmp/runtime.err" | head -1)"

retry() { # retry N PATTERN ros2-args...: the command until a stdout line is exactly PATTERN
  local n=$1 want=$2
  shift 2
  for _ in $(seq 1 "$n"); do
    r2 "$@" >"$tmp/retry.out" && grep -qxF "$want" "$tmp/retry.out" && return 0
    sleep 1
  done
  return 1
}
if retry 5 /autonomy node list --no-daemon; then
  pass "node-list (/autonomy)"
else
  fail node-list "/autonomy not in ros2 node list: check the distro build, ROS_DOMAIN_ID and multicast"
fi
if retry 5 "/autonomy/markers [std_msgs/msg/String]" topic list -t --no-daemon &&
  grep -qxF "/autonomy/decisions [autonomy_msgs/msg/Decision]" "$tmp/retry.out"; then
  pass "topic-list (/autonomy/markers, /autonomy/decisions with their types)"
else
  fail topic-list "$(tr '\n' ' ' <"$tmp/retry.out")"
fi
if retry 5 "/autonomy/tool [autonomy_msgs/srv/Tool]" service list -t --no-daemon; then
  pass "service-list (/autonomy/tool)"
else
  fail service-list "$(tr '\n' ' ' <"$tmp/retry.out")"
fi

call() { # call KIND PARAMS_JSON: prints the Tool_Response line
  r2 service call /autonomy/tool autonomy_msgs/srv/Tool \
    "{kind: '$1', params_json: '$2'}" | grep 'Tool_Response('
}
field() { # field NAME LINE: a field of a printed Tool_Response
  sed -n "s/.*$1='\([^']*\)'.*/\1/p" <<<"$2"
}
resp=$(call tool.echo '{"message": "robot check"}')
allow_id=$(field audit_id "$resp")
if [ "$(field decision "$resp")" = allow ] && grep -qF "output_json='\"robot check\"'" <<<"$resp"; then
  pass "service-allow (tool.echo answered, audit id $allow_id)"
else
  fail service-allow "${resp:-no answer from /autonomy/tool}"
fi
resp=$(call tool.shell '{"command": "id"}')
if [ "$(field decision "$resp")" = deny ]; then
  pass "service-deny (tool.shell: $(field reason "$resp"))"
else
  fail service-deny "${resp:-no answer}"
fi
resp=$(call tool.echo 'oops')
if [ "$(field decision "$resp")" = deny ] && grep -q "malformed request" <<<"$resp"; then
  pass "service-malformed (deny, not recorded)"
else
  fail service-malformed "${resp:-no answer}"
fi

# A decision made over HTTP reaches `ros2 topic echo /autonomy/decisions`.
setsid ros2 topic echo --no-daemon /autonomy/decisions autonomy_msgs/msg/Decision \
  </dev/null >"$tmp/decisions.out" 2>>"$cli_err" &
echo_pid=$!
pids+=("$echo_pid")
seen=""
for _ in $(seq 1 40); do
  python3 - "$url" >/dev/null 2>&1 <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + '/v1/tool', headers={'Content-Type': 'application/json'},
                             data=json.dumps({'kind': 'tool.echo', 'params': {'message': 'robot check over http'}}).encode())
urllib.request.urlopen(req, timeout=10).read()
EOF
  sleep 0.5
  if grep -q "^source: http" "$tmp/decisions.out"; then
    seen=yes
    break
  fi
done
kill -INT "$echo_pid" 2>/dev/null
if [ -n "$seen" ]; then
  pass "decisions-echo (an HTTP decision on /autonomy/decisions)"
else
  fail decisions-echo "ros2 topic echo /autonomy/decisions printed no HTTP decision within 20 s"
fi

if [ -n "$allow_id" ] && "$AUTONOMY" wal inspect --dir "$wal" --json --audit-id "$allow_id" 2>/dev/null |
  grep -q '"source":"ros2"'; then
  pass "wal-source-ros2 (the service's decision is in the WAL)"
else
  fail wal-source-ros2 "no WAL record with source ros2 for audit id '${allow_id}'"
fi

# The runtime stops cleanly on SIGINT.
kill -INT "$runtime_pid" 2>/dev/null
for _ in $(seq 1 100); do
  kill -0 "$runtime_pid" 2>/dev/null || break
  sleep 0.1
done
if grep -q "autonomy: stopped" "$tmp/runtime.err" && "$AUTONOMY" wal verify --dir "$wal" >/dev/null 2>&1; then
  pass "runtime-stop (stopped on SIGINT, the WAL verifies)"
else
  fail runtime-stop "$(tail -2 "$tmp/runtime.err" | tr '\n' ' ')"
fi

# --- markers of `autonomy run ros2.launch`, seen by a plain echo started first
if [ $# -ge 2 ]; then
  setsid ros2 topic echo --no-daemon --field data /autonomy/markers std_msgs/msg/String \
    </dev/null >"$tmp/markers.out" 2>>"$cli_err" &
  markers_pid=$!
  pids+=("$markers_pid")
  # Running before the run, as an operator's would be.
  retry 10 "Subscription count: 1" topic info --no-daemon /autonomy/markers ||
    echo "note: ros2 topic echo /autonomy/markers did not show up in the graph" >&2
  setsid "$AUTONOMY" run ros2.launch "$@" </dev/null >"$tmp/launch.out" 2>"$tmp/launch.err" &
  run_pid=$!
  pids+=("$run_pid")
  for _ in $(seq 1 $((LAUNCH_SECS * 10))); do
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -INT "$run_pid" 2>/dev/null
  wait "$run_pid"
  run_code=$?
  sleep 1
  kill -INT "$markers_pid" 2>/dev/null
  want="ros2-telemetry-active ros2-launch-allowed ros2-stack-start ros2-policy-enforced ros2-wal-recording"
  got=$(sed -n 's/^PASS \(ros2-[a-z-]*\) context=native$/\1/p' "$tmp/markers.out" | tr '\n' ' ')
  if [ "$run_code" = 0 ] && [ "${got% }" = "$want" ]; then
    pass "markers (all five on /autonomy/markers, in order)"
  else
    fail markers "autonomy run exited $run_code; ros2 topic echo saw: ${got:-nothing}"
  fi
else
  echo "SKIP markers (give a PACKAGE and LAUNCH_FILE to check autonomy run ros2.launch)"
fi

if grep -q "Failed to parse type hash" "$cli_err"; then
  fail type-hashes "$(grep -m1 'Failed to parse type hash' "$cli_err")"
else
  pass "type-hashes (no ROS warning about our endpoints)"
fi
if grep -Eq 'WARN|ERROR' "$tmp/runtime.err"; then
  fail runtime-log "$(grep -Em1 'WARN|ERROR' "$tmp/runtime.err")"
else
  pass "runtime-log (no warnings)"
fi

echo "robot-check: $passed passed, $failed failed"
[ "$failed" = 0 ]
