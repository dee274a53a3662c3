"""Documents and chunks (issue: knowledge)."""
