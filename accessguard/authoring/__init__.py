"""Tools for the security team: policy cases, lint, learn, schema pull."""
