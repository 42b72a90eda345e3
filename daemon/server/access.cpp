// SO_PEERCRED and SO_PEERGROUPS, and allow-list matching.
#include "daemon/server/access.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace firmad {

Peer peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    throw std::system_error(errno, std::generic_category(), "SO_PEERCRED");
  Peer p{cred.pid, cred.uid, cred.gid, {}, {}};
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t glen = groups.size() * sizeof(gid_t);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      p.groups = std::move(groups);
      break;
    }
    if (errno != ERANGE || glen / sizeof(gid_t) > 65536) break;
    groups.resize(glen / sizeof(gid_t));
  }
  const std::string proc = "/proc/" + std::to_string(cred.pid);
  char text[4096];
  if (const ssize_t n = ::readlink((proc + "/exe").c_str(), text, sizeof text); n > 0 && n < static_cast<ssize_t>(sizeof text)) {
    p.executable.assign(text, static_cast<std::size_t>(n));
  } else if (const int fd = ::open((proc + "/comm").c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
    const ssize_t m = ::read(fd, text, 64);
    ::close(fd);
    if (m > 0) p.command.assign(text, static_cast<std::size_t>(text[m - 1] == '\n' ? m - 1 : m));
  }
  return p;
}

log::Field Peer::program() const {
  if (!executable.empty()) return {"exe", executable};
  if (!command.empty()) return {"comm", command};
  return {"program", "unreadable"};
}

bool allowed(const AccessList& list, const Peer& peer) {
  if (std::find(list.users.begin(), list.users.end(), peer.uid) != list.users.end()) return true;
  for (gid_t g : list.groups) {
    if (g == peer.gid || std::find(peer.groups.begin(), peer.groups.end(), g) != peer.groups.end()) return true;
  }
  return false;
}

}  // namespace firmad
