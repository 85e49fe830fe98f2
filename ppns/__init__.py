"""PPNS: the device socket server for Parse IoT clients."""
