"""Built-in implementations of the core: the embedded synthetic dataset and the
in-process executor. Registered through the core's own entry point, exactly as
a third-party plugin would be."""
