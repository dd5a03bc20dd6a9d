# A package, so that this folder's conftest.py does not replace tests/conftest.py as the
# module `conftest` that other test folders import from.
