"""The state service: versioned key/value state."""
