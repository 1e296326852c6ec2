/* Test-only stand-in for Envoy in the Pod test: listens on 0.0.0.0:15001 and answers every
 * connection with one line, "proxy orig <ip:port>", where ip:port is the connection's original
 * destination before the REDIRECT (SO_ORIGINAL_DST), or "proxy orig none" if it was not
 * redirected. Built with `cc -static` so it runs in the FROM-scratch image. Exits on SIGTERM
 * (as PID 1 of a container it would otherwise ignore it, and the pod would stop slowly). */
#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 15001;
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) {
        perror("origdst-proxy: socket");
        return 1;
    }
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_ANY)}};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0) {
        perror("origdst-proxy: bind/listen");
        return 1;
    }
    printf("origdst-proxy: listening on 0.0.0.0:%d\n", port);
    fflush(stdout);
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0) continue;
        struct sockaddr_in orig;
        socklen_t len = sizeof orig;
        char line[128];
        if (getsockopt(conn, SOL_IP, SO_ORIGINAL_DST, &orig, &len) == 0) {
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &orig.sin_addr, ip, sizeof ip);
            snprintf(line, sizeof line, "proxy orig %s:%d\n", ip, ntohs(orig.sin_port));
        } else {
            snprintf(line, sizeof line, "proxy orig none\n");
        }
        ssize_t ignored = write(conn, line, strlen(line));
        (void)ignored;
        printf("origdst-proxy: %s", line);
        fflush(stdout);
        close(conn);
    }
}
