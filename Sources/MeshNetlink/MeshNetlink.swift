// The nftables netlink backend (libnftnl + libmnl): see issue 4.
