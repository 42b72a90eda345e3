// Abusive peers driven by one epoll thread; each connection's ending tallied by kind.
#include "abusive_peers.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "protocol/limits.hpp"

namespace firmad::load {

namespace {

using Clock = std::chrono::steady_clock;

const std::string kGetInfo = std::string(R"({"method":"org.varlink.service.GetInfo"})") + '\0';
const std::string kHalfFrame = R"({"method":"io.firmad.Signer.Sta)";
const std::string kSlowOpening = R"({"method":"io.firmad.Signer.Status",)";
const std::string kStreamChunk(64 * 1024, 'a');
constexpr long long kOversizeBytes = static_cast<long long>(protocol::kMaxMessageBytes) + 64 * 1024;

int connect_unix(const std::filesystem::path& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

}  // namespace

const char* name(Kind kind) {
  switch (kind) {
    case Kind::Held: return "held";
    case Kind::Silent: return "silent";
    case Kind::Slow: return "slow";
    case Kind::HalfOpen: return "half_open";
    case Kind::HalfClosed: return "half_closed";
    case Kind::Oversize: return "oversize";
    case Kind::Endless: return "endless";
    case Kind::OverLimit: return "over_limit";
    case Kind::Deny: return "deny";
    case Kind::Violate: return "violate";
  }
  return "?";
}

Kind kind_named(const std::string& text) {
  for (Kind k : kAllKinds)
    if (text == name(k)) return k;
  throw std::invalid_argument("no peer kind named " + text);
}

void AbusivePeers::set_deny_key(const std::string& alias) {
  // 32 calls a batch: a digest of SHA-256 length, so only the access check refuses it.
  const std::string call = R"({"method":"io.firmad.Signer.Sign","parameters":{"key":")" + alias +
                           R"(","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}})" + '\0';
  deny_frames_.clear();
  for (int i = 0; i < 32; ++i) deny_frames_ += call;
}

struct AbusivePeers::Peer {
  Kind kind;
  int fd = -1;
  Clock::time_point connected = Clock::now();
  Clock::time_point next_byte = connected;  // Slow: when the next byte goes
  std::size_t slow_sent = 0;
  std::string out;                          // a fixed frame or its opening
  std::size_t out_off = 0;
  long long stream_left = 0;                // 'a's still to send after `out`
  bool write_closed = false;                // sent all, or the daemon stopped reading
  bool polling_out = false;
  std::string in;
  bool violation = false, buffers_full = false;
  long long bytes_sent = 0;
  bool dead = false;
};

AbusivePeers::AbusivePeers(std::filesystem::path socket, std::chrono::milliseconds idle_timeout,
                           std::chrono::milliseconds slow_interval)
    : socket_(std::move(socket)), idle_timeout_(idle_timeout), slow_interval_(slow_interval) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw std::runtime_error(std::string("epoll/eventfd: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  thread_ = std::thread([this] { run(); });
}

AbusivePeers::~AbusivePeers() {
  stop();
  ::close(wake_fd_);
  ::close(epoll_fd_);
}

void AbusivePeers::hang_up(Kind kind) {
  hang_up_ = static_cast<int>(kind);
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  while (hang_up_.load() != -1 && thread_.joinable() && !stop_)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the thread's next round
}

void AbusivePeers::stop() {
  stop_ = true;
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  for (auto& p : pending_) {
    ++tallies_[p->kind].connections;
    ++tallies_[p->kind].hung_up;
    ::close(p->fd);
  }
  pending_.clear();
}

std::unique_ptr<AbusivePeers::Peer> AbusivePeers::connect_peer(Kind kind) {
  const int fd = connect_unix(socket_);
  if (fd < 0) {
    std::lock_guard lock(mu_);
    ++tallies_[kind].connect_failed;
    return nullptr;
  }
  auto p = std::make_unique<Peer>();
  p->kind = kind;
  p->fd = fd;
  switch (kind) {
    case Kind::Held: p->out = kGetInfo; break;
    case Kind::HalfOpen:
    case Kind::HalfClosed: p->out = kHalfFrame; break;
    case Kind::Oversize: p->stream_left = kOversizeBytes; break;
    case Kind::Endless: p->stream_left = LLONG_MAX; break;
    case Kind::Deny: p->out = deny_frames_; break;
    case Kind::Violate: p->out = std::string("not json") + '\0'; break;
    case Kind::Slow:
    case Kind::Silent:
    case Kind::OverLimit: break;
  }
  return p;
}

void AbusivePeers::add(Kind kind, int count) {
  std::vector<std::unique_ptr<Peer>> made;
  for (int i = 0; i < count; ++i)
    if (auto p = connect_peer(kind)) made.push_back(std::move(p));
  {
    std::lock_guard lock(mu_);
    tallies_[kind];  // reported even if every connect failed
    for (auto& p : made) pending_.push_back(std::move(p));
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void AbusivePeers::adopt(std::unique_ptr<Peer> owned) {
  Peer& p = *owned;
  peers_[&p] = std::move(owned);
  if (p.kind == Kind::Slow) slow_.push_back(&p);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.ptr = &p;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, p.fd, &ev);
  ++open_;
  {
    std::lock_guard lock(mu_);
    ++tallies_[p.kind].connections;
  }
  drive_writes(p);
}

void AbusivePeers::drive_writes(Peer& p) {
  while (!p.write_closed) {
    const char* data;
    std::size_t len;
    if (p.out_off < p.out.size()) {
      data = p.out.data() + p.out_off;
      len = p.out.size() - p.out_off;
    } else if (p.kind == Kind::Deny && !p.out.empty()) {
      p.out_off = 0;  // the next batch of the same calls
      continue;
    } else if (p.stream_left > 0) {
      data = kStreamChunk.data();
      len = static_cast<std::size_t>(std::min<long long>(p.stream_left, kStreamChunk.size()));
    } else {
      p.write_closed = true;
      if (p.kind == Kind::HalfClosed) ::shutdown(p.fd, SHUT_WR);
      break;
    }
    const ssize_t n = ::send(p.fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p.bytes_sent += n;
      if (p.out_off < p.out.size())
        p.out_off += static_cast<std::size_t>(n);
      else
        p.stream_left -= n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    p.write_closed = true;  // EPIPE or ECONNRESET: what the daemon said is still to be read
  }
  const bool want_out = !p.write_closed;
  if (want_out != p.polling_out) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0u);
    ev.data.ptr = &p;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, p.fd, &ev);
    p.polling_out = want_out;
  }
}

void AbusivePeers::read_all(Peer& p) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(p.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      p.in.append(buf, static_cast<std::size_t>(n));
      for (std::size_t nul; (nul = p.in.find('\0')) != std::string::npos; p.in.erase(0, nul + 1)) {
        const std::string_view frame(p.in.data(), nul);
        if (frame.find("ProtocolViolation") != std::string_view::npos) {
          p.violation = true;
          continue;
        }
        if (frame.find("BuffersFull") != std::string_view::npos) {
          p.buffers_full = true;
          continue;
        }
        std::lock_guard lock(mu_);  // counted at once: callers wait for replies
        if (frame.find("\"error\"") == std::string_view::npos)
          ++tallies_[p.kind].replies;
        else if (frame.find("AccessDenied") != std::string_view::npos)
          ++tallies_[p.kind].access_denied;
        else
          ++tallies_[p.kind].other_errors;
      }
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    end(p, true);  // EOF or reset: the daemon closed
    return;
  }
}

void AbusivePeers::end(Peer& p, bool closed_by_daemon) {
  if (p.dead) return;
  p.dead = true;
  const double elapsed = std::chrono::duration<double>(Clock::now() - p.connected).count();
  {
    std::lock_guard lock(mu_);
    Tally& t = tallies_[p.kind];
    if (!closed_by_daemon)
      ++t.hung_up;
    else if (p.violation)
      ++t.protocol_violation;
    else if (p.buffers_full)
      ++t.buffers_full;
    else if (elapsed >= 0.8 * std::chrono::duration<double>(idle_timeout_).count())
      ++t.closed_after_idle_timeout;
    else
      ++t.closed_early;
    if (closed_by_daemon) {
      t.first_close_s = t.first_close_s < 0 ? elapsed : std::min(t.first_close_s, elapsed);
      t.last_close_s = std::max(t.last_close_s, elapsed);
    }
    t.bytes_sent += p.bytes_sent;
  }
  ::close(p.fd);  // also leaves the epoll set
  --open_;
  dead_.push_back(&p);
}

void AbusivePeers::run() {
  std::vector<epoll_event> events(256);
  std::vector<Kind> reconnect;
  while (!stop_) {
    // The next slow byte due sets how long to sleep.
    auto wait = std::chrono::milliseconds(50);
    const auto now = Clock::now();
    for (Peer* p : slow_) {
      if (p->write_closed) continue;
      if (p->next_byte <= now) {
        const char c = p->slow_sent < kSlowOpening.size() ? kSlowOpening[p->slow_sent] : ' ';
        const ssize_t n = ::send(p->fd, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == 1) {
          ++p->slow_sent;
          ++p->bytes_sent;
        } else if (errno != EAGAIN && errno != EINTR) {
          p->write_closed = true;
        }
        p->next_byte = now + slow_interval_;
      }
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(p->next_byte - now));
    }
    const int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                               static_cast<int>(std::max<long>(0, wait.count())));
    for (int i = 0; i < n; ++i) {
      if (!events[i].data.ptr) {
        std::uint64_t v;
        (void)!::read(wake_fd_, &v, sizeof v);
        continue;
      }
      Peer& p = *static_cast<Peer*>(events[i].data.ptr);
      if (p.dead) continue;
      if (events[i].events & EPOLLOUT) drive_writes(p);
      if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_all(p);
    }
    // Peers added before a hang-up was asked for are in by then.
    std::vector<std::unique_ptr<Peer>> fresh;
    {
      std::lock_guard lock(mu_);
      fresh.swap(pending_);
    }
    for (auto& p : fresh) adopt(std::move(p));
    if (const int k = hang_up_.load(); k >= 0) {
      for (auto& [raw, p] : peers_)
        if (static_cast<int>(p->kind) == k) end(*p, false);
      hang_up_ = -1;
    }
    // Ended peers leave after the batch (a later event may name them);
    // repeating kinds connect again.
    for (Peer* p : dead_) {
      if (repeat_ && (p->kind == Kind::Oversize || p->kind == Kind::Endless || p->kind == Kind::Deny ||
                      p->kind == Kind::Violate))
        reconnect.push_back(p->kind);
      if (p->kind == Kind::Slow) std::erase(slow_, p);
      peers_.erase(p);
    }
    dead_.clear();
    for (Kind k : reconnect)
      if (!stop_)
        if (auto p = connect_peer(k)) adopt(std::move(p));
    reconnect.clear();
  }
  for (auto& [raw, p] : peers_) end(*p, false);
  peers_.clear();
  slow_.clear();
  dead_.clear();
}

bool AbusivePeers::wait_all_ended(std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (pending_.empty() && open_.load() == 0) return true;
    }
    if (Clock::now() >= deadline) return false;
    // Polling interval of a bounded wait, not a fixed delay.
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool AbusivePeers::wait_ended(Kind kind, long count, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      const Tally& t = tallies_[kind];
      const long ended = t.protocol_violation + t.buffers_full + t.closed_after_idle_timeout + t.closed_early + t.hung_up;
      if (t.connections >= count && ended == t.connections) return true;
    }
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::map<Kind, Tally> AbusivePeers::tallies() const {
  std::lock_guard lock(mu_);
  return tallies_;
}

long raise_open_file_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return -1;
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
  ::getrlimit(RLIMIT_NOFILE, &r);
  return r.rlim_cur == RLIM_INFINITY ? LONG_MAX : static_cast<long>(r.rlim_cur);
}

long proc_status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
  return -1;
}

long socket_fds(pid_t pid) {
  std::error_code ec;
  std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
  if (ec) return -1;
  long n = 0;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    // An fd closed between listing and reading is simply not counted.
    const auto target = std::filesystem::read_symlink(it->path(), ec);
    if (!ec && target.native().rfind("socket:", 0) == 0) ++n;
  }
  return n;
}

long open_file_limit(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max open files")));
    std::string soft;
    fields >> soft;
    return soft == "unlimited" ? LONG_MAX : std::strtol(soft.c_str(), nullptr, 10);
  }
  return -1;
}

EventCount count_events(const std::string& log, const std::string& name) {
  const std::string needle = "event=" + name, left_out = " not_logged_before=";
  EventCount n;
  for (std::size_t at = 0; (at = log.find(needle, at)) != std::string::npos; at += needle.size()) {
    const std::size_t after = at + needle.size();
    if (after != log.size() && log[after] != ' ' && log[after] != '\n') continue;
    ++n.lines;
    const std::size_t eol = std::min(log.find('\n', at), log.size());
    if (const std::size_t f = log.find(left_out, at); f < eol)
      n.left_out += std::strtol(log.c_str() + f + left_out.size(), nullptr, 10);
  }
  // A flood that stopped: the writer reported what no later line carried.
  const std::string summary = "event=log-throttled", of = " of=" + name;
  for (std::size_t at = 0; (at = log.find(summary, at)) != std::string::npos; at += summary.size()) {
    const std::size_t eol = std::min(log.find('\n', at), log.size());
    const std::size_t o = log.find(of, at);
    if (o >= eol || (o + of.size() < log.size() && log[o + of.size()] != ' ' && log[o + of.size()] != '\n')) continue;
    if (const std::size_t f = log.find(left_out, at); f < eol)
      n.left_out += std::strtol(log.c_str() + f + left_out.size(), nullptr, 10);
  }
  return n;
}

}  // namespace firmad::load
