/* The floor for bench/authz.sh: the least an authorization plugin can do. It answers every
 * AuthZReq and AuthZRes with {"Allow":true} without reading what it was sent (beyond the HTTP
 * framing), one thread per connection, kept alive like ours. What dockerd adds with this plugin
 * is the cost of Docker's plugin machinery itself; what ours adds beyond it is ours.
 * It reads requests as dockerd's plugin client sends them (Go's net/http: Content-Length,
 * never chunked, one request at a time per connection) and nothing else. On SIGTERM it prints
 * how many AuthZReq calls it answered (bench/authz.sh checks that dockerd asked it).
 *   floor_plugin SOCKET_PATH */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int read_request(int fd, char *buf, size_t cap, size_t *have, char *path, size_t pcap) {
    /* Reads headers into buf, then discards Content-Length bytes of body. */
    for (;;) {
        char *end = memmem(buf, *have, "\r\n\r\n", 4);
        if (end) {
            size_t hlen = (size_t)(end - buf) + 4;
            long clen = 0;
            char *p = buf;
            while (p < end) {
                char *nl = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
                if (!nl) break;
                if ((size_t)(nl - p) > 15 && strncasecmp(p, "Content-Length:", 15) == 0)
                    clen = strtol(p + 15, NULL, 10);
                if (clen < 0) return -1;
                p = nl + 2;
            }
            sscanf(buf, "%*s %255s", path);
            (void)pcap;
            size_t avail = *have - hlen;
            if ((long)avail >= clen) {
                /* What came after the body stays for the next request. */
                *have = avail - (size_t)clen;
                memmove(buf, buf + hlen + clen, *have);
            } else {
                /* The rest of the body: read exactly what is missing, and drop it. */
                size_t need = (size_t)clen - avail;
                while (need) {
                    ssize_t n = read(fd, buf, need < cap ? need : cap);
                    if (n <= 0) return -1;
                    need -= (size_t)n;
                }
                *have = 0;
            }
            return 0;
        }
        if (*have == cap) return -1;
        ssize_t n = read(fd, buf + *have, cap - *have);
        if (n <= 0) return -1;
        *have += (size_t)n;
    }
}

static atomic_long authz_req;

static void on_term(int sig) {
    (void)sig;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "floor: %ld AuthZReq calls\n", atomic_load(&authz_req));
    if (write(1, msg, (size_t)n) < 0) _exit(1);
    _exit(0);
}

static void *conn(void *arg) {
    int fd = (int)(long)arg;
    static const char allow[] = "{\"Allow\":true}";
    static const char activate[] = "{\"Implements\":[\"authz\"]}";
    char *buf = malloc(1 << 20);
    size_t have = 0;
    char path[256], out[512];
    while (read_request(fd, buf, 1 << 20, &have, path, sizeof path) == 0) {
        const char *body = strcmp(path, "/Plugin.Activate") == 0 ? activate : allow;
        if (strcmp(path, "/AuthZPlugin.AuthZReq") == 0) atomic_fetch_add(&authz_req, 1);
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n"
                         "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
        if (write(fd, out, (size_t)n) != n) break;
    }
    free(buf);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: floor_plugin SOCKET_PATH\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 128)) { perror(argv[1]); return 1; }
    for (;;) {
        int fd = accept(l, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t;
        pthread_create(&t, NULL, conn, (void *)(long)fd);
        pthread_detach(t);
    }
}
