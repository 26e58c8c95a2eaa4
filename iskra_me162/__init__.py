"""iskra-me162: read electricity meters through an optical IR head and feed home automation.

The version is defined once, in setup.py; :func:`iskra_me162.version.version` reads it.
"""
