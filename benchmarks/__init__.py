"""accessguard's overhead benchmarks: guarded against raw psycopg 3, same server, same run.

Run ``python -m benchmarks.bench`` from the repository root; see benchmarks/README.md.
Nothing here is imported by the library or by the test suite.
"""
