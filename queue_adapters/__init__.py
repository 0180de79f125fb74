"""Pure scheduler adapters: build argument lists, parse outputs. No I/O."""
