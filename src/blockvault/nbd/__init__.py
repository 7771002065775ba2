"""The NBD protocol (read-only, newstyle fixed handshake): a server that exports any
random-access reader with its extents, and a client that reads what ``qemu-nbd`` serves.
It sits low in the layers so that the disk layer can read a VM disk through it and the
browse layer can serve a snapshot through it.

Glossary:
  export      what a server offers: a size, reads by offset, and its holes
              (``server.Export``); a ``client.Client`` is one too.
  hole        a run that reads as zeros and is never read: announced through the
              ``base:allocation`` meta context (block status) and in read replies.
  URI         where a server listens: ``nbd+unix:///?socket=PATH`` or
              ``nbd://HOST:PORT`` (what ``qemu-img``, QEMU and ``nbdinfo`` take).
  wire        the protocol's numbers and byte layouts (``wire.py``), declared once.
"""
