"""Settings for the channels area (from the environment; see the README's variable table)."""
