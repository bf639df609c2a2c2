"""Reference clients service."""
