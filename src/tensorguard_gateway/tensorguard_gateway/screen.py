"""What a site gateway checks before a robot's signed record leaves the site (ROS-free).

The gateway is untrusted for integrity and confidentiality: the aggregator verifies every signature
end to end, and nothing here needs or sees a key. What the gateway can do is refuse to carry what is
not its site's: it decodes the signed record inside an ``EncryptedUpdate`` or ``OutcomeReport`` and
drops it, counted by reason, unless the robot id the robot signed is one of the site's robots and the
message header names the same robot. The robot's key expression is built from the signed id, never
from the header. The server gateway applies the same check to what arrives under a robot's key, and to a
site's partial sum (site aggregation) that the site the signed record names is the site its key names.
"""
from __future__ import annotations

from collections.abc import Collection

from tensorguard_crypto import wire
from tensorguard_crypto.refusal import Reason, Refusal

from .keyexpr import ENCRYPTED_UPDATES, OUTCOME_REPORTS, SITE_SUMS, Channel

RECORDS = {ENCRYPTED_UPDATES.name: wire.UpdatePackage, OUTCOME_REPORTS.name: wire.OutcomeReport}


class GatewayRefusal(Refusal):
    """A message a gateway will not carry; `reason` says why (counted on /diagnostics)."""


def signed_robot(channel: Channel, header_robot: str, package: bytes) -> str:
    """The robot id signed inside `package` (an update or outcome report), which the header must repeat."""
    try:
        record = RECORDS[channel.name].deserialize(package)
    except wire.PackageTooLarge as error:
        raise GatewayRefusal(f'{channel.name}: {error}', reason=Reason.OVERSIZED) from None
    except wire.WireFormatError as error:
        raise GatewayRefusal(f'{channel.name}: not a signed record ({error})', reason=Reason.MALFORMED) from None
    if record.robot_id != header_robot:
        raise GatewayRefusal(f'{channel.name}: header claims robot {header_robot[:64]!r}, the package is signed '
                             f'for {record.robot_id!r}', reason=Reason.HEADER_MISMATCH)
    return record.robot_id


def screen(channel: Channel, header_robot: str, package: bytes, robots: Collection[str]) -> str:
    """The signed robot id of a record a gateway may carry for `robots`; `GatewayRefusal` otherwise."""
    robot = signed_robot(channel, header_robot, package)
    if robot not in robots:
        raise GatewayRefusal(f'{channel.name}: signed by robot {robot!r}, which is not one of {sorted(robots)}',
                             reason=Reason.FOREIGN_ROBOT)
    return robot


def screen_site_sum(header_site: str, package: bytes, site: str) -> str:
    """The site id signed inside a `SitePartialSum` record that arrived under `site`'s key; the message header
    and the record must both name `site` (`GatewayRefusal` otherwise). Its signature is the aggregator's to check."""
    try:
        record = wire.SitePartialSum.deserialize(package)
    except wire.PackageTooLarge as error:
        raise GatewayRefusal(f'{SITE_SUMS.name}: {error}', reason=Reason.OVERSIZED) from None
    except wire.WireFormatError as error:
        raise GatewayRefusal(f'{SITE_SUMS.name}: not a signed record ({error})', reason=Reason.MALFORMED) from None
    if not header_site == record.site_id == site:
        raise GatewayRefusal(f'{SITE_SUMS.name}: under the key of site {site!r}, the header names {header_site[:64]!r} '
                             f'and the signed record {record.site_id!r}', reason=Reason.HEADER_MISMATCH)
    return site
