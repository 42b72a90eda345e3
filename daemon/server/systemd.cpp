// sd_listen_fds(3) and sd_notify(3) semantics without linking libsystemd: the
// protocols are small and stable, and the library cost 400 KiB of resident memory.
#include "daemon/server/systemd.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace firmad::systemd {
namespace {

constexpr int kListenFdsStart = 3;

template <typename T>
bool parse(const char* s, T& out) {
  if (!s || !*s) return false;
  const char* end = s + std::strlen(s);
  auto [p, ec] = std::from_chars(s, end, out);
  return ec == std::errc() && p == end;
}

}  // namespace

std::vector<int> listen_fds() {
  std::vector<int> fds;
  pid_t pid = 0;
  int count = 0;
  if (parse(std::getenv("LISTEN_PID"), pid) && pid == ::getpid() && parse(std::getenv("LISTEN_FDS"), count) &&
      count > 0 && count < 1024) {
    for (int fd = kListenFdsStart; fd < kListenFdsStart + count; ++fd) {
      const int flags = ::fcntl(fd, F_GETFD);
      if (flags < 0) continue;
      ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
      fds.push_back(fd);
    }
  }
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  return fds;
}

std::chrono::microseconds watchdog_interval() {
  long long usec = 0;
  pid_t pid = 0;
  if (!parse(std::getenv("WATCHDOG_USEC"), usec) || usec <= 0) return std::chrono::microseconds(0);
  if (parse(std::getenv("WATCHDOG_PID"), pid) && pid != ::getpid()) return std::chrono::microseconds(0);
  return std::chrono::microseconds(usec);
}

bool notify(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return false;
  sockaddr_un addr{};
  const std::size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const socklen_t alen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  const bool ok = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), alen) ==
                  static_cast<ssize_t>(state.size());
  ::close(fd);
  return ok;
}

}  // namespace firmad::systemd
