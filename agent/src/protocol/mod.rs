//! Framing and messages between host and agent.
