"""Small shared utilities (input checking, logging helpers)."""
