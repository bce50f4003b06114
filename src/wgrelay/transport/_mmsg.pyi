# Types of the optional C extension built from _mmsg.c (see its header comment).
from wgrelay.transport.base import Addr

BATCH: int
MAX_SIZE: int

def recv_batch(fd: int, size: int, /) -> list[tuple[bytes, Addr]]: ...
def send_batch(
    fd: int, family: int, items: list[tuple[bytes | memoryview, Addr]], /
) -> list[tuple[int, int]]: ...
