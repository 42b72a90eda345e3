// The peer's credentials and the access policy checked on every request.
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

#include "daemon/config.hpp"
#include "daemon/log.hpp"

namespace firmad {

// Who is on the other end of a connection, from SO_PEERCRED/SO_PEERGROUPS.
struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups at connect time
  // What firmad could read of the program at connect time, for the audit
  // trail and the log: /proc/<pid>/exe (readable by a root firmad, or for a
  // peer of firmad's own uid), else /proc/<pid>/comm (its name, which the
  // process itself can set: a hint, not proof), else neither.
  std::string executable;
  std::string command;
  // The field naming the program: exe=PATH, comm=NAME or program=unreadable.
  log::Field program() const;
};

// Returns the credentials of the process connected on a Unix socket fd.
// Throws std::system_error if the kernel does not say.
Peer peer_of(int fd);

// Whether the peer's uid is listed, or its primary or a supplementary group is.
bool allowed(const AccessList& list, const Peer& peer);

}  // namespace firmad
