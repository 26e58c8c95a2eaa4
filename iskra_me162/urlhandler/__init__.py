"""pyserial URL handlers of this project (``sim://``, the built-in simulated meter).

pyserial looks here when ``"iskra_me162.urlhandler"`` is in ``serial.protocol_handler_packages``;
for ``sim://...`` it imports :mod:`.protocol_sim` and uses its ``Serial`` class.
"""
