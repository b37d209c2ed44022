//! ROS 2: interop with independent DDS peers, `autonomy run ros2.launch`, and the real ROS 2.

mod interop;
mod launch;
mod real;
