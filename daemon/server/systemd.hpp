// The two pieces of the systemd protocol firmad uses: socket activation and notify.
#pragma once
#include <chrono>
#include <string_view>
#include <vector>

namespace firmad::systemd {

// Returns the listening sockets passed by systemd ($LISTEN_PID is this process,
// $LISTEN_FDS sockets from fd 3), marked close-on-exec, and unsets the
// variables so children do not inherit them. Empty when not socket-activated.
std::vector<int> listen_fds();

// Sends a state string ("READY=1", "STATUS=...", "STOPPING=1") to
// $NOTIFY_SOCKET. Returns false when there is none or the send failed.
bool notify(std::string_view state);

// The interval at which systemd expects "WATCHDOG=1" ($WATCHDOG_USEC, for
// this process per $WATCHDOG_PID), or zero when no watchdog is set.
std::chrono::microseconds watchdog_interval();

}  // namespace firmad::systemd
