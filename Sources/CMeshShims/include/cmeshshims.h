#ifndef CMESHSHIMS_H
#define CMESHSHIMS_H
#include <sys/types.h>
#include <sys/socket.h>
#include <linux/netlink.h>

/// setns(fd, CLONE_NEWNET); returns 0 or -1 with errno.
int cmesh_setns_net(int fd);
/// pipe2(fds, O_CLOEXEC); returns 0 or -1 with errno.
int cmesh_pipe_cloexec(int fds[2]);
/// Blocks SIGTERM and SIGINT and returns a non-blocking signalfd for them, or -1 with errno.
int cmesh_stop_signalfd(void);
/// pidfd_open(pid, 0): a descriptor that polls readable once `pid` has exited (close-on-exec),
/// or -1 with errno (ENOSYS before Linux 5.3, or where seccomp refuses it).
int cmesh_pidfd_open(pid_t pid);

#endif
