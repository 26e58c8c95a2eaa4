"""iskra-me162: read electricity meters through an optical IR head and feed home automation."""

__version__ = "1.0.0"
