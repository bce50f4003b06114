"""The transport seam: where wgrelay's shells meet sockets and clocks.

``base`` holds the interfaces (``Runtime``, ``DatagramTransport``,
``DatagramReceiver``); ``udp`` implements them with real sockets on an asyncio
loop; ``wgrelay.sim`` implements them in memory on a virtual-time loop. The
relay server, the relay client and the local proxies take a ``Runtime`` and
never open a socket or read a clock themselves.
"""

from wgrelay.transport.base import (
    Addr,
    DatagramReceiver,
    DatagramTransport,
    DeferredSender,
    Runtime,
)

__all__ = ["Addr", "DatagramReceiver", "DatagramTransport", "DeferredSender", "Runtime"]
