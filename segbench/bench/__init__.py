"""``segbench bench``: speed, measured side by side (images/s against a bare loop, the loader, each
norm, precision, packed seeds, time to accuracy). ``command`` is the command; the others are its parts."""
