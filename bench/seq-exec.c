// seq-exec [-i FILE] PROGRAM [ARG...] [:: [-i FILE] PROGRAM [ARG...]]...
// Runs the commands one after the other (fork + execv, absolute paths, no shell), each with
// stdin from FILE if given (else /dev/null), and stops at the first failure with its exit
// status. It is how the benchmark runs "iptables-restore + ip6tables-restore" as one measured
// command without a shell's start-up cost (what Istio's Go binary does: exec, wait, exec, wait).
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int i = 1;
    while (i < argc) {
        const char *input = "/dev/null";
        if (strcmp(argv[i], "-i") == 0 && i + 1 < argc) {
            input = argv[i + 1];
            i += 2;
        }
        int end = i;
        while (end < argc && strcmp(argv[end], "::") != 0) end++;
        if (end == i) {
            fprintf(stderr, "seq-exec: empty command\n");
            return 64;
        }
        argv[end < argc ? end : argc] = NULL;  // terminate this command's argv in place
        pid_t pid = fork();
        if (pid < 0) {
            perror("seq-exec: fork");
            return 111;
        }
        if (pid == 0) {
            int fd = open(input, O_RDONLY);
            if (fd < 0 || dup2(fd, 0) < 0) {
                perror(input);
                _exit(111);
            }
            close(fd);
            execv(argv[i], argv + i);
            perror(argv[i]);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0) {
            perror("seq-exec: waitpid");
            return 111;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "seq-exec: %s failed (status %d)\n", argv[i], status);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        i = end + 1;
    }
    return 0;
}
