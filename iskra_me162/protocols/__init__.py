"""Sans-I/O protocol cores: bytes in, readings out. No serial ports, sockets or clocks here."""
