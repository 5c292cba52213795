"""The transport fields of a message that carries a signed package (`package`, `package_size`,
`package_sha256`: EncryptedUpdate, SitePartialSum), filled by the sender and checked by the receiver.
The digest only catches a package damaged or cut on the way; the signature inside it is what counts."""
from __future__ import annotations

import hashlib
from typing import Any, TypeVar

Message = TypeVar('Message')


def carry_package(msg: Message, blob: bytes, stamp: Any = None) -> Message:
    """`msg` with `blob` as its package, its size and SHA-256, and the header stamped if `stamp` is given."""
    msg.package = blob
    msg.package_size = len(blob)
    msg.package_sha256 = list(hashlib.sha256(blob).digest())
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def package_intact(msg: Any) -> bool:
    """Whether `msg`'s package has the size and SHA-256 its sender put beside it."""
    blob = bytes(msg.package)
    return len(blob) == msg.package_size and hashlib.sha256(blob).digest() == bytes(msg.package_sha256)
