"""Settings for the conversations area (from the environment; see the README's variable table)."""
