"""dualwrite."""
