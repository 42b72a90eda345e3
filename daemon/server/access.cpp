// SO_PEERCRED and SO_PEERGROUPS, and allow-list matching.
#include "daemon/server/access.hpp"

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
  char exe[4096];
  const std::string link = "/proc/" + std::to_string(cred.pid) + "/exe";
  const ssize_t n = ::readlink(link.c_str(), exe, sizeof exe - 1);
  p.executable = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : "?";
  return p;
}

bool allowed(const AccessList& list, const Peer& peer) {
  if (std::find(list.users.begin(), list.users.end(), peer.uid) != list.users.end()) return true;
  for (gid_t g : list.groups) {
    if (g == peer.gid || std::find(peer.groups.begin(), peer.groups.end(), g) != peer.groups.end()) return true;
  }
  return false;
}

}  // namespace firmad
