/* The lab's echo server: answers every TCP connection on $PORT (default
 * 8080) with one line naming the pod, its node and the client address it
 * saw, as an HTTP/1.0 response so curl and plain sockets both read it, then
 * closes. A client that opens with "keep\n" keeps the connection: each line
 * it sends after that is answered with the same line (no HTTP), until it
 * closes, so long-lived connections can be followed through moves. One
 * child process per connection; exits on SIGTERM.
 * Built with gcc -static. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v && *v ? v : fallback;
}

static void serve(int fd, const struct sockaddr_in6 *peer) {
  char client[INET6_ADDRSTRLEN] = "?";
  const struct in6_addr *a = &peer->sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(a))
    inet_ntop(AF_INET, &a->s6_addr[12], client, sizeof client);
  else
    inet_ntop(AF_INET6, a, client, sizeof client);

  /* Read what the client sent first (a request line, or nothing), so the
   * answer does not race a client still writing. */
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[1024];
  ssize_t got = read(fd, buf, sizeof buf);

  char body[512];
  int n = snprintf(body, sizeof body, "pod=%s node=%s client=%s\n", env_or("POD_NAME", "?"),
                   env_or("NODE_NAME", "?"), client);
  if (got >= 5 && memcmp(buf, "keep\n", 5) == 0) {
    struct timeval none = {0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    size_t skip = 5; /* the "keep" line itself gets no answer */
    while (got > 0) {
      for (ssize_t i = (ssize_t)skip; i < got; i++)
        if (buf[i] == '\n' && write(fd, body, (size_t)n) != n) {
          close(fd);
          return;
        }
      skip = 0;
      got = read(fd, buf, sizeof buf);
    }
    close(fd);
    return;
  }
  char out[768];
  int m = snprintf(out, sizeof out,
                   "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n%s",
                   n, body);
  (void)write(fd, out, (size_t)m);
  shutdown(fd, SHUT_WR);
  close(fd);
}

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
  int port = atoi(env_or("PORT", "8080"));
  int s = socket(AF_INET6, SOCK_STREAM, 0);
  int zero = 0, one = 1;
  setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port),
                              .sin6_addr = in6addr_any};
  if (bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 512) != 0) {
    perror("echo: listen");
    return 1;
  }
  fprintf(stderr, "echo: listening on :%d\n", port);
  for (;;) {
    struct sockaddr_in6 peer;
    socklen_t len = sizeof peer;
    int fd = accept(s, (struct sockaddr *)&peer, &len);
    if (fd < 0) continue;
    if (fork() == 0) {
      close(s);
      serve(fd, &peer);
      _exit(0);
    }
    close(fd);
  }
}
