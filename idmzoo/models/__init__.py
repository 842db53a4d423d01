"""The model families built from a spec."""
