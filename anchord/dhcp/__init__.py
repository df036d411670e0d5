"""The dhcp worker's protocol and kernel code: macvlan child, DHCPv4/DHCPv6 clients, lease file.

One module per concern: ``link`` (the macvlan child), ``packets`` (DHCPv4 wire format),
``v4`` (the DHCPv4 state machine), ``v6`` (SLAAC observation and the DHCPv6 client),
``rawio`` (AF_PACKET sockets), ``kernel`` (addresses and routes), ``leasefile`` and ``timers``.
"""
