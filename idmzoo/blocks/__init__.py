"""The built-in blocks (registered by :mod:`idmzoo.builtins`)."""
