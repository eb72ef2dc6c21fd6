"""Which IP addresses are on the public internet: the rule `visit` and the live crawler both refuse the rest by.

A module of its own so that the crawler's spider process gets it without importing `visit`'s HTTP client.
"""

from __future__ import annotations

import ipaddress

# Public addresses that are nonetheless the cloud host's own: Azure's wire server. (169.254.169.254, fd00:ec2::254
# and Alibaba's 100.100.100.200 are link-local, unique-local and shared space, which are not public anyway.)
_HOST_SERVICE_ADDRESSES = frozenset({ipaddress.ip_address("168.63.129.16")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``address`` is on the public internet: not loopback, private, link-local, shared, reserved, multicast,
    unspecified or a cloud host service, including IPv4 written inside IPv6 (``::ffff:127.0.0.1``, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.is_global and not address.is_multicast and address not in _HOST_SERVICE_ADDRESSES
