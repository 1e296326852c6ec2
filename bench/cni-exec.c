// cni-exec CONF NAME PROGRAM [ARG...]
// Runs PROGRAM as a container runtime runs a CNI plugin for ADD: in the caller's network
// namespace (the node's), with CNI_COMMAND=ADD, CNI_NETNS=/run/netns/NAME, CNI_CONTAINERID,
// CNI_IFNAME, CNI_ARGS and CNI_PATH set, and the network configuration CONF on stdin. The
// benchmark's other alternatives start through netns-exec (setns + exec); this launcher costs
// the same (an open + exec, no setns: the plugin enters the namespace itself).
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cni-exec CONF NAME PROGRAM [ARG...]\n");
        return 64;
    }
    char netns[4096];
    if (snprintf(netns, sizeof netns, "/run/netns/%s", argv[2]) >= (int)sizeof netns) return 64;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || dup2(fd, 0) < 0) {
        perror(argv[1]);
        return 111;
    }
    close(fd);
    setenv("CNI_COMMAND", "ADD", 1);
    setenv("CNI_CONTAINERID", "bench", 1);
    setenv("CNI_NETNS", netns, 1);
    setenv("CNI_IFNAME", "eth0", 1);
    setenv("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=bench", 1);
    setenv("CNI_PATH", "/opt/cni/bin", 1);
    execv(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
