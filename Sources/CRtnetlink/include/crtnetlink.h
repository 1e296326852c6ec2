#ifndef CRTNETLINK_H
#define CRTNETLINK_H
/* The kernel's rtnetlink constants and structs (message types, attribute numbers, header
   layouts), for MeshSystem's route code. A module of its own: these uapi headers next to
   glibc's socket headers in one module hide glibc's SOCK_* enums from Swift. */
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/fib_rules.h>
#include <linux/if_addr.h>
#endif
