"""The NBD protocol (read-only, newstyle fixed handshake): a server that exports any
random-access reader with its extents, and a client that reads what ``qemu-nbd`` serves.
It sits low in the layers so that the disk layer can read a VM disk through it and the
browse layer can serve a snapshot through it."""
