"""Settings for the events area (from the environment; see the README's variable table)."""
