"""Settings for the knowledge area (from the environment; see the README's variable table)."""
