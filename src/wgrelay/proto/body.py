"""The base of every control message body (the part inside the envelope)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import MsgType


class Body(ABC):
    """Base of control message bodies: an encoder, a decoder, a type byte."""

    TYPE: ClassVar[MsgType]
    __slots__ = ()

    @abstractmethod
    def encode_body(self, w: Writer) -> None: ...

    @classmethod
    @abstractmethod
    def decode_body(cls, b: Buffer) -> Self: ...
