//! berth-echo
