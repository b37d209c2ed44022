"""Golden CDR vectors for the bridge's decoder, made by the real ROS 2 (rclpy's
serialize_message, i.e. the RMW's own serializer) and the message's own fields as rclpy reads them.

Run with ROS sourced, once per RMW_IMPLEMENTATION (src/bridge/cdr/golden.json holds both).
Prints one JSON document: [{"type", "hex", "json"}, ...] (hex includes the 4-byte header).
"""

import array
import json
import math
import sys

from rclpy.serialization import serialize_message

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32, Polygon, PoseWithCovarianceStamped, Twist
from sensor_msgs.msg import BatteryState, JointState, NavSatFix, PointCloud2, PointField
from std_msgs.msg import Bool, Byte, Char, Empty, Int8MultiArray, Int16, Int64, String, UInt64
from std_msgs.msg import MultiArrayDimension, UInt8MultiArray


def plain(v):
    if hasattr(v, "get_fields_and_field_types"):
        return {k: plain(getattr(v, k)) for k in v.get_fields_and_field_types()}
    if isinstance(v, (list, tuple, array.array)):
        return [plain(x) for x in v]
    if hasattr(v, "tolist"):
        return plain(v.tolist())
    if isinstance(v, (bytes, bytearray)):
        # rclpy gives a `byte` field as a one-byte bytes object.
        return v[0] if len(v) == 1 else list(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def twist(x, z):
    t = Twist()
    t.linear.x = x
    t.angular.z = z
    return t


def msgs():
    yield twist(0.5, -1.25)
    yield twist(float("nan"), float("inf"))
    yield String(data="héllo")
    yield String(data="")
    yield Bool(data=True)
    yield Byte(data=b"\x07")
    yield Char(data=200)
    yield Empty()
    yield Int16(data=-2)
    yield Int64(data=-(2**62))
    yield UInt64(data=2**64 - 1)
    js = JointState()
    js.header.stamp = Time(sec=1, nanosec=2)
    js.header.frame_id = "base"
    js.name = ["a", "bc"]
    js.position = [1.5, -2.0]
    js.effort = [0.25]
    yield js
    p = PoseWithCovarianceStamped()
    p.header.frame_id = "map"
    p.pose.pose.position.y = 3.0
    p.pose.pose.orientation.w = 1.0
    p.pose.covariance = [float(i) for i in range(36)]
    yield p
    n = NavSatFix()
    n.status.status = -1
    n.status.service = 9
    n.latitude = 48.1
    n.position_covariance_type = 2
    yield n
    b = BatteryState()
    b.voltage = 12.5
    b.percentage = float("nan")
    b.present = True
    b.cell_voltage = [3.1, 3.2]
    b.location = "slot"
    b.serial_number = "sn-1"
    yield b
    pc = PointCloud2()
    pc.height = 1
    pc.width = 2
    pc.fields = [PointField(name="x", offset=0, datatype=7, count=1)]
    pc.is_bigendian = False
    pc.point_step = 4
    pc.row_step = 8
    pc.data = [1, 2, 3, 250, 0, 0, 128, 63]
    pc.is_dense = True
    yield pc
    yield Polygon(points=[Point32(x=1.5, y=-0.5, z=0.0), Point32(x=0.0, y=2.0, z=1.0)])
    m = Int8MultiArray()
    m.layout.dim = [MultiArrayDimension(label="x", size=3, stride=3)]
    m.layout.data_offset = 1
    m.data = [-1, 0, 127]
    yield m
    yield UInt8MultiArray(data=[0, 255, 16])


def type_name(m):
    mod = type(m).__module__.split(".")[0]
    return f"{mod}/msg/{type(m).__name__}"


json.dump(
    [
        {"type": type_name(m), "hex": serialize_message(m).hex(), "json": plain(m)}
        for m in msgs()
    ],
    sys.stdout,
    indent=1,
)
print()
