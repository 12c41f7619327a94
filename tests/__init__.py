"""The test suite, a package: pytest imports each file as `tests.<folder>.<module>` with the repository root
on sys.path, and the tests share their helpers as `tests.support`."""
